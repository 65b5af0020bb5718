//! One hop measurement through transport-pg: an endpoint in this process whose handler
//! sends each message on to its own queue, run at a given concurrency and batch size.
//!
//! The endpoint is started fresh for every measurement, the careful start-up mode is
//! waited out, and after a short warm-up the handled messages are counted over the
//! measuring window.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use transport_pg::{Database, EndpointBuilder, Shutdown};

use crate::error::{Error, Result};
use crate::ring::{Forward, Hop};

/// How to run the endpoint.
#[derive(Debug, Clone, Copy)]
pub struct HopRun {
    /// Messages per transaction.
    pub batch: usize,
    /// Worker tasks.
    pub workers: usize,
    /// LISTEN/NOTIFY on, or poll only.
    pub wakeups: bool,
}

/// What one measurement found.
#[derive(Debug, Clone, Copy)]
pub struct HopRate {
    /// Messages handled per second in the measuring window.
    pub rate: f64,
    /// Messages handled from start to shutdown, warm-up included.
    pub handled: u64,
}

/// How long to wait for the careful start-up mode to end before giving up.
const CAREFUL_LIMIT: Duration = Duration::from_secs(60);

/// Runs endpoint `name` on its ring and returns the messages handled per second over
/// `measure`, after `warmup`, and all it handled.
pub async fn measure(
    db: &Database,
    name: &str,
    run: HopRun,
    warmup: Duration,
    measure: Duration,
) -> Result<HopRate> {
    let handled = Arc::new(AtomicU64::new(0));
    let endpoint = EndpointBuilder::new(name, db.clone())
        .handler::<Hop, _>(Forward {
            endpoint: name.to_owned(),
            handled: handled.clone(),
        })
        .batch_size(run.batch)
        .concurrency(run.workers)
        .wakeups(run.wakeups)
        .start()
        .await
        .map_err(Error::transport(format!("start endpoint {name}")))?;

    let started = Instant::now();
    while endpoint.is_careful() {
        if started.elapsed() > CAREFUL_LIMIT {
            endpoint.shutdown(Duration::from_secs(5)).await;
            return Err(Error::Timeout(format!(
                "endpoint {name} still in its careful mode after {}s",
                CAREFUL_LIMIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(warmup).await;

    let before = handled.load(Ordering::Relaxed);
    let from = Instant::now();
    tokio::time::sleep(measure).await;
    let after = handled.load(Ordering::Relaxed);
    let elapsed = from.elapsed();

    if endpoint.shutdown(Duration::from_secs(10)).await == Shutdown::TimedOut {
        return Err(Error::Timeout(format!(
            "endpoint {name} did not stop within 10 s"
        )));
    }
    Ok(HopRate {
        rate: (after - before) as f64 / elapsed.as_secs_f64(),
        handled: handled.load(Ordering::Relaxed),
    })
}
