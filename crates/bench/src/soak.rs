//! The soak: a million messages round one endpoint's ring, then the last minute's rate
//! against the first's, and what the queue table looks like at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use transport_pg::tokio_postgres::Client;
use transport_pg::{Database, EndpointBuilder};

use crate::error::{Error, Result};
use crate::ring::{Forward, Hop};

/// How the soak ran and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct Soak {
    /// Messages per transaction.
    pub batch: usize,
    /// Worker tasks.
    pub workers: usize,
    /// Messages handled.
    pub messages: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// Seconds in each of the two windows compared (60, or a fifth of the run if shorter
    /// than five minutes, so that the windows never overlap).
    pub window_s: f64,
    /// Messages per second in the first window.
    pub first_rate: f64,
    /// Messages per second in the last window.
    pub last_rate: f64,
    /// `last_rate / first_rate`.
    pub ratio: f64,
    /// The queue table at the start.
    pub table_start: TableState,
    /// The queue table at the end.
    pub table_end: TableState,
    /// The table every 10 seconds.
    pub samples: Vec<TableSample>,
}

/// Size and tuple counts of the queue table.
#[derive(Debug, Clone, Serialize)]
pub struct TableState {
    /// `pg_total_relation_size`, MB: table, index and toast.
    pub total_mb: f64,
    /// `pg_relation_size` of the primary key index, MB.
    pub index_mb: f64,
    /// Live tuples by the statistics.
    pub live_tuples: i64,
    /// Dead tuples by the statistics.
    pub dead_tuples: i64,
    /// Autovacuum runs so far.
    pub autovacuums: i64,
    /// Manual vacuums so far; during the soak, the endpoint's own.
    pub vacuums: i64,
}

/// The table at one moment of the soak.
#[derive(Debug, Clone, Serialize)]
pub struct TableSample {
    /// Seconds since the start.
    pub at_s: f64,
    /// Messages handled so far.
    pub messages: u64,
    /// The table then.
    pub table: TableState,
}

async fn table_state(client: &Client, queue_bare: &str) -> Result<TableState> {
    let row = client
        .query_one(
            "SELECT pg_total_relation_size(c.oid), \
                    pg_relation_size(i.indexrelid), \
                    s.n_live_tup, s.n_dead_tup, s.autovacuum_count, s.vacuum_count \
             FROM pg_class AS c \
             JOIN pg_namespace AS n ON n.oid = c.relnamespace \
             JOIN pg_stat_user_tables AS s ON s.relid = c.oid \
             JOIN pg_index AS i ON i.indrelid = c.oid AND i.indisprimary \
             WHERE n.nspname = 'bus' AND c.relname = $1",
            &[&queue_bare],
        )
        .await
        .map_err(Error::db("read the queue table's size"))?;
    Ok(TableState {
        total_mb: row.get::<_, i64>(0) as f64 / 1e6,
        index_mb: row.get::<_, i64>(1) as f64 / 1e6,
        live_tuples: row.get(2),
        dead_tuples: row.get(3),
        autovacuums: row.get(4),
        vacuums: row.get(5),
    })
}

/// Runs `messages` messages round endpoint `name`'s ring (already filled).
pub async fn run(
    db: &Database,
    name: &str,
    batch: usize,
    workers: usize,
    messages: u64,
    mut progress: impl FnMut(u64, f64),
) -> Result<Soak> {
    let queue_bare = format!("{name}_queue");
    let client = db
        .connect("bench soak")
        .await
        .map_err(Error::transport("connect for the soak"))?;
    let table_start = table_state(&client, &queue_bare).await?;

    let handled = Arc::new(AtomicU64::new(0));
    let endpoint = EndpointBuilder::new(name, db.clone())
        .handler::<Hop, _>(Forward {
            endpoint: name.to_owned(),
            handled: handled.clone(),
        })
        .batch_size(batch)
        .concurrency(workers)
        .start()
        .await
        .map_err(Error::transport(format!("start endpoint {name}")))?;

    let started = Instant::now();
    let mut per_second = Vec::new();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let limit = Duration::from_secs(3600);
    loop {
        tick.tick().await;
        let count = handled.load(Ordering::Relaxed);
        per_second.push(count);
        let at = started.elapsed().as_secs_f64();
        if per_second.len() % 10 == 0 {
            let table = table_state(&client, &queue_bare).await?;
            samples.push(TableSample {
                at_s: at,
                messages: count,
                table,
            });
            progress(count, at);
        }
        if count >= messages || started.elapsed() > limit {
            break;
        }
    }
    endpoint.shutdown(Duration::from_secs(10)).await;
    let seconds = started.elapsed().as_secs_f64();
    let table_end = table_state(&client, &queue_bare).await?;
    let total = *per_second.last().unwrap_or(&0);

    let (window, first_rate, last_rate) = windows(&per_second);
    Ok(Soak {
        batch,
        workers,
        messages: total,
        seconds,
        window_s: window as f64,
        first_rate,
        last_rate,
        ratio: if first_rate > 0.0 {
            last_rate / first_rate
        } else {
            0.0
        },
        table_start,
        table_end,
        samples,
    })
}

/// The window length in seconds and the rates of the first and last window, from the
/// cumulative counts at each second.
fn windows(cumulative: &[u64]) -> (usize, f64, f64) {
    let seconds = cumulative.len();
    let window = if seconds >= 300 {
        60
    } else {
        (seconds / 5).max(1)
    };
    if seconds < window {
        return (window, 0.0, 0.0);
    }
    let at = |i: usize| if i == 0 { 0 } else { cumulative[i - 1] };
    let first = (at(window) - at(0)) as f64 / window as f64;
    let last = (at(seconds) - at(seconds - window)) as f64 / window as f64;
    (window, first, last)
}

#[cfg(test)]
mod tests {
    use super::windows;

    #[test]
    fn windows_of_a_long_run_are_a_minute_each() {
        let counts: Vec<u64> = (1..=400).map(|s| s * 100).collect();
        let (window, first, last) = windows(&counts);
        assert_eq!(window, 60);
        assert_eq!((first, last), (100.0, 100.0));
    }

    #[test]
    fn windows_of_a_short_run_do_not_overlap() {
        let counts: Vec<u64> = (1..=100).map(|s| s * 10).collect();
        let (window, first, last) = windows(&counts);
        assert_eq!(window, 20);
        assert_eq!((first, last), (10.0, 10.0));
    }
}
