//! The soak: a million messages round one endpoint's ring, then the last minute's rate
//! against the first's, and what the queue table looks like at the end.
//!
//! The run lasts until its messages are done and for at least two windows, so the two
//! windows compared never overlap and each is a whole minute by default, as issue 11's
//! target reads; a shorter window averages over less of the machine's noise.

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
    /// Seconds in each of the two windows compared (`--soak-window`, 60 by default).
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
#[derive(Debug, Clone, Default, Serialize)]
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

impl Soak {
    /// The slowest and the fastest rate from one sample to the next, the start counting
    /// as a sample of none, in messages a second; `None` without samples.
    pub fn sample_rates(&self) -> Option<(f64, f64)> {
        let start = (0.0, 0);
        let points: Vec<(f64, u64)> = std::iter::once(start)
            .chain(self.samples.iter().map(|s| (s.at_s, s.messages)))
            .collect();
        let rates: Vec<f64> = points
            .windows(2)
            .filter(|pair| pair[1].0 > pair[0].0)
            .map(|pair| pair[1].1.saturating_sub(pair[0].1) as f64 / (pair[1].0 - pair[0].0))
            .collect();
        let slowest = rates.iter().copied().reduce(f64::min)?;
        let fastest = rates.iter().copied().reduce(f64::max)?;
        Some((slowest, fastest))
    }
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

/// How long the soak runs and what it compares.
#[derive(Debug, Clone, Copy)]
pub struct Length {
    /// Messages to handle at least.
    pub messages: u64,
    /// Seconds in each window compared; the run lasts at least two.
    pub window_s: usize,
}

/// Runs `length.messages` messages round endpoint `name`'s ring (already filled), and on
/// until two windows have passed.
pub async fn run(
    db: &Database,
    name: &str,
    batch: usize,
    workers: usize,
    length: Length,
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
        let both_windows = per_second.len() >= 2 * length.window_s;
        if (count >= length.messages && both_windows) || started.elapsed() > limit {
            break;
        }
    }
    endpoint.shutdown(Duration::from_secs(10)).await;
    let seconds = started.elapsed().as_secs_f64();
    let table_end = table_state(&client, &queue_bare).await?;
    let total = *per_second.last().unwrap_or(&0);

    let (first_rate, last_rate) = windows(&per_second, length.window_s);
    Ok(Soak {
        batch,
        workers,
        messages: total,
        seconds,
        window_s: length.window_s as f64,
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

/// The rates of the first and the last `window` seconds, from the cumulative counts at
/// each second; zeros when the run is shorter than two windows (stopped at its time limit).
fn windows(cumulative: &[u64], window: usize) -> (f64, f64) {
    let seconds = cumulative.len();
    if window == 0 || seconds < 2 * window {
        return (0.0, 0.0);
    }
    let at = |i: usize| if i == 0 { 0 } else { cumulative[i - 1] };
    let first = (at(window) - at(0)) as f64 / window as f64;
    let last = (at(seconds) - at(seconds - window)) as f64 / window as f64;
    (first, last)
}

#[cfg(test)]
mod tests {
    use super::{Soak, TableSample, TableState, windows};

    fn soak_with(samples: &[(f64, u64)]) -> Soak {
        Soak {
            batch: 1,
            workers: 16,
            messages: samples.last().map_or(0, |s| s.1),
            seconds: samples.last().map_or(0.0, |s| s.0),
            window_s: 60.0,
            first_rate: 0.0,
            last_rate: 0.0,
            ratio: 0.0,
            table_start: TableState::default(),
            table_end: TableState::default(),
            samples: samples
                .iter()
                .map(|&(at_s, messages)| TableSample {
                    at_s,
                    messages,
                    table: TableState::default(),
                })
                .collect(),
        }
    }

    #[test]
    fn sample_rates_are_the_slowest_and_fastest_step_between_samples() {
        let soak = soak_with(&[(10.0, 1_000), (20.0, 3_000), (30.5, 3_500), (40.0, 5_400)]);
        assert_eq!(soak.sample_rates(), Some((500.0 / 10.5, 200.0)));
        assert_eq!(
            soak_with(&[(10.0, 1_000)]).sample_rates(),
            Some((100.0, 100.0))
        );
        assert_eq!(soak_with(&[]).sample_rates(), None);
    }

    #[test]
    fn the_windows_are_the_first_and_the_last_seconds_of_the_run() {
        // 100 a second for the first minute, then 90: only the windows' ends count.
        let counts: Vec<u64> = (1..=150u64)
            .map(|s| {
                if s <= 60 {
                    s * 100
                } else {
                    6_000 + (s - 60) * 90
                }
            })
            .collect();
        assert_eq!(windows(&counts, 60), (100.0, 90.0));
        assert_eq!(windows(&counts, 10), (100.0, 90.0));
    }

    #[test]
    fn a_run_shorter_than_two_windows_has_no_rates() {
        let counts: Vec<u64> = (1..=119).map(|s| s * 10).collect();
        assert_eq!(windows(&counts, 60), (0.0, 0.0));
        assert_eq!(windows(&counts, 0), (0.0, 0.0));
    }
}
