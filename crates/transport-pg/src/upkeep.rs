//! Queue upkeep: the endpoint vacuums its own queue table once its workers have received
//! enough messages since the last time.
//!
//! Every message received is a row deleted, and a deleted row stays on its page, and in
//! the index, until a vacuum clears it. Autovacuum looks at each database about once a
//! minute (`autovacuum_naptime`), which on a queue moving ten thousand messages a second
//! leaves over half a million dead rows between its visits: the table grows to hundreds
//! of megabytes and the receive slows as they pile up (by about a tenth by 600,000 in a
//! soak on the bench's cluster). So each endpoint process counts the messages its workers
//! receive and, after [`UpkeepConfig::every`] of them and no sooner than
//! [`UpkeepConfig::min_gap`] after the last one, runs `VACUUM (SKIP_LOCKED, TRUNCATE
//! false)` on its queue. SKIP_LOCKED makes it a no-op while another instance's vacuum, or autovacuum's,
//! is running on the table, so instances never queue up behind each other.
//!
//! This module owns the count, the decision and the statement; not the table's
//! autovacuum settings (see the installer's DDL) or the delayed table, whose churn is a
//! small fraction of the queue's. VACUUM needs the table's owner (or the database's, or a
//! superuser); a role without that right is told once, at info level, and the upkeep
//! stops, leaving the table to autovacuum.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::name::EndpointName;

/// When the endpoint vacuums its queue.
#[derive(Debug, Clone)]
pub struct UpkeepConfig {
    /// Messages received by this process after which it vacuums its queue; 0 turns the
    /// upkeep off.
    pub every: u64,
    /// The least time between two vacuums by this process.
    pub min_gap: Duration,
}

impl Default for UpkeepConfig {
    fn default() -> Self {
        UpkeepConfig {
            every: 20_000,
            min_gap: Duration::from_secs(2),
        }
    }
}

/// Whether a vacuum or an analyze of table `$1` (a regclass name) is running now, by
/// autovacuum or anyone else. VACUUM (SKIP_LOCKED) would pass over the table then anyway,
/// but it says so with a WARNING in the server's log each time.
const BEING_VACUUMED: &str = "\
SELECT EXISTS (SELECT 1 FROM pg_stat_progress_vacuum WHERE relid = $1::text::regclass)
    OR EXISTS (SELECT 1 FROM pg_stat_progress_analyze WHERE relid = $1::text::regclass)";

/// How often the task looks at the count.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Whether the connected role may vacuum the table `$1` (a regclass name).
const MAY_VACUUM: &str = "\
SELECT pg_has_role(c.relowner, 'MEMBER')
       OR pg_has_role(d.datdba, 'MEMBER')
       OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
FROM pg_class AS c, pg_database AS d
WHERE c.oid = $1::text::regclass AND d.datname = current_database()";

/// The count of received messages the workers add to; cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReceivedCount(Arc<AtomicU64>);

impl ReceivedCount {
    /// Adds `n` messages received.
    pub fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn total(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Vacuums one endpoint's queue table as its messages go through.
pub(crate) struct QueueUpkeep {
    pub endpoint: EndpointName,
    pub pool: Pool,
    /// The queue table, validated and quoted (`bus."name_queue"`).
    pub queue: String,
    pub received: ReceivedCount,
    pub config: UpkeepConfig,
}

impl QueueUpkeep {
    /// Runs until `stop` turns true, or until it finds it may not vacuum the table.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        if self.config.every == 0 {
            debug!(endpoint = %self.endpoint, "queue upkeep off");
            return;
        }
        let mut vacuumed_at = self.received.total();
        let mut last = Instant::now();
        let mut allowed: Option<bool> = None;

        while !*stop.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_INTERVAL) => {}
                _ = stop.changed() => continue,
            }
            let received = self.received.total();
            if received - vacuumed_at < self.config.every || last.elapsed() < self.config.min_gap {
                continue;
            }

            match self.vacuum(&mut allowed).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) if error.is_connection_problem() => {
                    // The workers report the outage; try again after the next gap.
                    debug!(endpoint = %self.endpoint, error = %crate::error::chain(&error),
                        "queue vacuum failed");
                }
                Err(error) => {
                    warn!(endpoint = %self.endpoint, error = %crate::error::chain(&error),
                        "queue vacuum failed; trying again later");
                }
            }
            vacuumed_at = received;
            last = Instant::now();
        }
    }

    /// Vacuums the queue; `Ok(false)` when the role may not, which it reports once.
    async fn vacuum(&self, allowed: &mut Option<bool>) -> Result<bool> {
        let client = self.pool.get().await?;
        if allowed.is_none() {
            let row = client
                .query_one(MAY_VACUUM, &[&self.queue])
                .await
                .map_err(Error::db("check the right to vacuum the queue"))?;
            let may: Option<bool> = row.get(0);
            *allowed = Some(may.unwrap_or(false));
        }
        if *allowed != Some(true) {
            info!(endpoint = %self.endpoint, queue = %self.queue,
                "queue upkeep off: this role does not own the queue table, so it cannot \
                 vacuum it; autovacuum alone keeps it");
            return Ok(false);
        }

        let busy: bool = client
            .query_one(BEING_VACUUMED, &[&self.queue])
            .await
            .map_err(Error::db("check for a vacuum of the queue"))?
            .get(0);
        if busy {
            debug!(endpoint = %self.endpoint, queue = %self.queue,
                "the queue is being vacuumed or analyzed already; skipping this turn");
            return Ok(true);
        }

        let started = Instant::now();
        client
            .batch_execute(&crate::sql::queue::vacuum(&self.queue))
            .await
            .map_err(Error::db(format!("vacuum {}", self.queue)))?;
        debug!(endpoint = %self.endpoint, queue = %self.queue,
            ms = started.elapsed().as_millis() as u64, "vacuumed the queue");
        Ok(true)
    }
}
