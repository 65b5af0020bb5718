//! Peak memory of a real endpoint process: the example endpoint, built in release mode,
//! handling a backlog at full speed, with its `VmHWM` read from `/proc` at the end.

use std::path::Path;
use std::time::Duration;

use example_endpoint::Work;
use serde::Serialize;
use tokio::time::Instant;
use transport_pg::Sender;

use crate::db::Server;
use crate::error::{Error, Result};
use crate::process;

/// What the measurement found.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// The binary measured.
    pub binary: String,
    /// Its worker count and batch size.
    pub workers: usize,
    /// Messages per transaction.
    pub batch: usize,
    /// Messages it handled.
    pub messages: usize,
    /// Seconds from the first send to the last handling.
    pub seconds: f64,
    /// Peak resident set (`VmHWM`), MB (10^6 bytes).
    pub peak_rss_mb: f64,
    /// Resident set at the end (`VmRSS`), MB.
    pub rss_mb: f64,
}

/// The endpoint's name in its database.
const NAME: &str = "rss";

/// Longest the backlog may take.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);

/// Runs `binary` on database `db` of `server`, sends it `messages` works and measures.
pub async fn measure(
    server: &Server,
    db: &str,
    binary: &Path,
    log: &Path,
    messages: usize,
) -> Result<Memory> {
    let (workers, batch) = (4, 10);
    let args: Vec<String> = [
        "--database-url",
        &server.url(db),
        "--name",
        NAME,
        "--concurrency",
        &workers.to_string(),
        "--batch-size",
        &batch.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut endpoint = process::start(binary, &args, &[("RUST_LOG", "warn")], log)?;
    let result = drive(server, db, &mut endpoint, messages).await;
    let stopped = endpoint.stop(Duration::from_secs(15)).await;
    let (seconds, (peak_kb, now_kb)) = result?;
    stopped?;
    Ok(Memory {
        binary: binary.display().to_string(),
        workers,
        batch,
        messages,
        seconds,
        peak_rss_mb: peak_kb as f64 * 1024.0 / 1e6,
        rss_mb: now_kb as f64 * 1024.0 / 1e6,
    })
}

async fn drive(
    server: &Server,
    db: &str,
    endpoint: &mut process::Running,
    messages: usize,
) -> Result<(f64, (u64, u64))> {
    let client = server.connect(db).await?;
    wait_installed(&client, endpoint).await?;

    let database = server.database(db)?;
    let sender = Sender::builder(&database, "bench_load")
        .pool_size(1)
        .build()
        .map_err(Error::transport("build the load sender"))?;
    let mut conn = server.connect(db).await?;
    let started = Instant::now();
    let mut sent = 0;
    while sent < messages {
        let chunk = (messages - sent).min(500);
        let tx = conn.transaction().await.map_err(Error::db("load: begin"))?;
        let mut outbox = sender.outbox();
        for i in 0..chunk {
            let work = Work {
                key: format!("rss-{}", sent + i),
                ..Work::default()
            };
            outbox
                .send_to(NAME, &work)
                .map_err(Error::transport("load: envelope"))?;
        }
        outbox
            .write(&tx)
            .await
            .map_err(Error::transport("load: send"))?;
        tx.commit().await.map_err(Error::db("load: commit"))?;
        outbox.committed();
        sent += chunk;
    }

    let wanted = messages as i64;
    loop {
        endpoint.check_alive()?;
        let row = client
            .query_one("SELECT count(*) FROM example.handled", &[])
            .await
            .map_err(Error::db("count example.handled"))?;
        if row.get::<_, i64>(0) >= wanted {
            break;
        }
        if started.elapsed() > DRAIN_LIMIT {
            return Err(Error::Timeout(format!(
                "the example endpoint handled fewer than {messages} messages in {} s",
                DRAIN_LIMIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let pid = endpoint.pid().ok_or_else(|| Error::Process {
        program: endpoint.name.clone(),
        reason: "no pid".into(),
    })?;
    let memory = process::memory_kb(pid).ok_or_else(|| Error::Process {
        program: endpoint.name.clone(),
        reason: format!("cannot read /proc/{pid}/status"),
    })?;
    Ok((seconds, memory))
}

/// Waits until the endpoint has installed its queue and created its business table.
async fn wait_installed(
    client: &transport_pg::tokio_postgres::Client,
    endpoint: &mut process::Running,
) -> Result<()> {
    let started = Instant::now();
    loop {
        endpoint.check_alive()?;
        let row = client
            .query_one(
                "SELECT to_regclass('bus.rss_queue') IS NOT NULL \
                    AND to_regclass('example.handled') IS NOT NULL",
                &[],
            )
            .await
            .map_err(Error::db("look for the endpoint's tables"))?;
        if row.get::<_, bool>(0) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(Error::Timeout(
                "the example endpoint did not install".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
