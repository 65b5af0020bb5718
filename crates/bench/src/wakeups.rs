//! Wake-up latency on an idle endpoint: send one message, wait for its handler to start,
//! pause so the endpoint is idle again, and repeat.
//!
//! The clock starts when the sender's commit has been acknowledged (the commit itself is
//! at most half a loopback round trip earlier) and stops when the handler is entered.
//! The endpoint's idle poll races the notification, so what is measured is the latency a
//! user sees: the earlier of the two.

use std::time::Duration;

use message::{Message, MessageKind};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use transport_pg::{Context, Database, EndpointBuilder, Handler, HandlerError, Sender};

use crate::error::{Error, Result};
use crate::stats::percentile;

/// The message whose handling is timed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ping {
    /// Its number in the series.
    pub n: u64,
}

impl Message for Ping {
    const NAME: &'static str = "bench.Ping";
    const KIND: MessageKind = MessageKind::Command;
}

/// Reports the moment each ping's handler starts.
struct Stopwatch {
    started: mpsc::UnboundedSender<(u64, Instant)>,
}

impl Handler<Ping> for Stopwatch {
    async fn handle(&self, ping: Ping, _ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        let _ = self.started.send((ping.n, Instant::now()));
        Ok(())
    }
}

/// What the series measured.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Timed sends.
    pub sends: usize,
    /// Pause after each handling, milliseconds.
    pub pause_ms: u64,
    /// Median commit-to-handler latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// The slowest, milliseconds.
    pub max_ms: f64,
    /// Handlers that started before the sender saw its commit acknowledged (counted as 0).
    pub before_ack: usize,
}

/// Sends that run the endpoint out of its careful start-up mode, untimed.
const WARM_UP_SENDS: u64 = 30;

/// How long one ping may take before the series is abandoned.
const PING_LIMIT: Duration = Duration::from_secs(10);

/// Runs the series on endpoint `name` in `db`.
pub async fn measure(db: &Database, name: &str, sends: usize, pause: Duration) -> Result<Latency> {
    let (started, mut handled) = mpsc::unbounded_channel();
    let endpoint = EndpointBuilder::new(name, db.clone())
        .handler::<Ping, _>(Stopwatch { started })
        .start()
        .await
        .map_err(Error::transport(format!("start endpoint {name}")))?;
    let sender = Sender::builder(db, "bench_client")
        .pool_size(1)
        .build()
        .map_err(Error::transport("build the latency sender"))?;

    let mut samples = Vec::with_capacity(sends);
    let mut before_ack = 0;
    for n in 0..WARM_UP_SENDS + sends as u64 {
        sender
            .send_to(name, &Ping { n })
            .await
            .map_err(Error::transport(format!("send ping {n}")))?;
        let acked = Instant::now();
        let at = loop {
            let (got, at) = tokio::time::timeout(PING_LIMIT, handled.recv())
                .await
                .map_err(|_| Error::Timeout(format!("ping {n} not handled within 10 s")))?
                .ok_or_else(|| Error::Timeout("the endpoint stopped handling".into()))?;
            if got == n {
                break at;
            }
        };
        if n >= WARM_UP_SENDS {
            if at < acked {
                before_ack += 1;
            }
            samples.push(at.saturating_duration_since(acked).as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(pause).await;
    }
    endpoint.shutdown(Duration::from_secs(5)).await;

    Ok(Latency {
        sends,
        pause_ms: pause.as_millis() as u64,
        p50_ms: percentile(&samples, 50.0).unwrap_or(0.0),
        p99_ms: percentile(&samples, 99.0).unwrap_or(0.0),
        max_ms: percentile(&samples, 100.0).unwrap_or(0.0),
        before_ack,
    })
}
