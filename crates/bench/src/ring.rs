//! The ring every hop measurement runs on: a queue pre-filled with a fixed number of
//! messages, where each hop takes n and puts n back, so the queue's size stays constant.
//!
//! The transport's ring is filled with real envelopes through a [`Sender`]; the
//! ceiling's ring, in a database of its own, gets copies of one of those rows, so both
//! queues hold rows of the same size in tables made by the same installer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use message::{Message, MessageKind};
use serde::{Deserialize, Serialize};
use transport_pg::tokio_postgres::Client;
use transport_pg::{Context, Database, EndpointName, Handler, HandlerError, Sender};

use crate::error::{Error, Result};

/// The message that goes round the ring.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hop {
    /// How many hops this message has made.
    pub n: u64,
}

impl Message for Hop {
    const NAME: &'static str = "bench.Hop";
    const KIND: MessageKind = MessageKind::Command;
}

/// Counts each message and sends one on to its own endpoint's queue.
pub struct Forward {
    /// The endpoint the handler runs in, which is where each message goes next.
    pub endpoint: String,
    /// Messages handled so far (before their commit; the ring has no failures).
    pub handled: Arc<AtomicU64>,
}

impl Handler<Hop> for Forward {
    async fn handle(&self, hop: Hop, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        self.handled.fetch_add(1, Ordering::Relaxed);
        ctx.send_to(&self.endpoint, &Hop { n: hop.n + 1 })?;
        Ok(())
    }
}

/// Messages per fill transaction.
const FILL_CHUNK: usize = 1000;

/// Applies the bus migrations and installs `endpoint`'s tables, as a start-up would.
pub async fn install(db: &Database, endpoint: &EndpointName) -> Result<()> {
    transport_pg::migrate(db, &transport_pg::bus_migrations())
        .await
        .map_err(Error::transport("migrate"))?;
    let mut client = db
        .connect("bench install")
        .await
        .map_err(Error::transport("connect to install"))?;
    transport_pg::install_endpoint(&mut client, endpoint)
        .await
        .map_err(Error::transport(format!("install {endpoint}")))?;
    Ok(())
}

/// Installs `endpoint` and fills its queue with `count` [`Hop`] envelopes.
pub async fn fill_transport(db: &Database, endpoint: &EndpointName, count: usize) -> Result<()> {
    install(db, endpoint).await?;
    let sender = Sender::builder(db, "bench_fill")
        .wakeups(false)
        .pool_size(1)
        .build()
        .map_err(Error::transport("build the fill sender"))?;
    let mut client = db
        .connect("bench fill")
        .await
        .map_err(Error::transport("connect to fill"))?;
    let mut left = count;
    while left > 0 {
        let chunk = left.min(FILL_CHUNK);
        let tx = client
            .transaction()
            .await
            .map_err(Error::db("fill: begin"))?;
        let mut outbox = sender.outbox();
        for _ in 0..chunk {
            outbox
                .send_to(endpoint.as_str(), &Hop { n: 0 })
                .map_err(Error::transport("fill: envelope"))?;
        }
        outbox
            .write(&tx)
            .await
            .map_err(Error::transport(format!("fill {endpoint}")))?;
        tx.commit().await.map_err(Error::db("fill: commit"))?;
        left -= chunk;
    }
    Ok(())
}

/// One queue row's content, as the transport wrote it.
#[derive(Debug, Clone)]
pub struct SampleRow {
    /// A message id.
    pub message_id: uuid::Uuid,
    /// The headers.
    pub headers: serde_json::Value,
    /// The encoded body.
    pub body: Vec<u8>,
}

/// The newest row of `queue` (quoted), to copy into the ceiling's ring.
pub async fn sample_newest(client: &Client, queue: &str) -> Result<SampleRow> {
    let sql = format!("SELECT message_id, headers, body FROM {queue} ORDER BY seq DESC LIMIT 1");
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(Error::db(format!("read a sample row of {queue}")))?;
    Ok(SampleRow {
        message_id: row.get(0),
        headers: row.get(1),
        body: row.get(2),
    })
}

/// Installs `endpoint` in the ceiling's database and fills its queue with `count`
/// copies of `sample` (each with a fresh message id).
pub async fn fill_ceiling(
    db: &Database,
    endpoint: &EndpointName,
    sample: &SampleRow,
    count: usize,
) -> Result<()> {
    install(db, endpoint).await?;
    let client = db
        .connect("bench fill")
        .await
        .map_err(Error::transport("connect to fill"))?;
    let sql = format!(
        "INSERT INTO {} (message_id, headers, body) \
         SELECT gen_random_uuid(), $1::jsonb, $2::bytea FROM generate_series(1, $3::integer)",
        endpoint.tables().queue
    );
    let count = i32::try_from(count).map_err(|_| Error::Config("ring too large".into()))?;
    client
        .execute(&sql, &[&sample.headers, &sample.body, &count])
        .await
        .map_err(Error::db("fill the ceiling's ring"))?;
    Ok(())
}

/// Rows in `queue` (quoted) now.
pub async fn count_rows(client: &Client, queue: &str) -> Result<i64> {
    let row = client
        .query_one(&format!("SELECT count(*) FROM {queue}"), &[])
        .await
        .map_err(Error::db(format!("count {queue}")))?;
    Ok(row.get(0))
}
