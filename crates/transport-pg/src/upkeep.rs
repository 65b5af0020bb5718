//! Queue upkeep: the endpoint vacuums its own queue table once its workers have taken
//! enough messages from it since the last time.
//!
//! Every message received is a row deleted, and a deleted row stays on its page, and in
//! the index, until a vacuum clears it. Autovacuum looks at each database about once a
//! minute (`autovacuum_naptime`), which on a queue moving ten thousand messages a second
//! leaves over half a million dead rows between its visits: the table grows to hundreds
//! of megabytes and the receive slows as they pile up (by about a tenth by 600,000 in a
//! soak on the bench's cluster). So each endpoint process counts the rows its workers
//! take (a batch retaken after a rollback counts twice; the count only paces the
//! vacuums) and, after [`UpkeepConfig::every`] of them and no sooner than
//! [`UpkeepConfig::min_gap`] after the last attempt, vacuums its queue with
//! `VACUUM (SKIP_LOCKED, TRUNCATE false)`, unless something already holds the table's
//! vacuum lock. SKIP_LOCKED covers the race that is left, so instances never queue up
//! behind each other or behind autovacuum.
//!
//! This module owns the count, the decision and the statement; not the table's
//! autovacuum settings (see the installer's DDL) or the delayed table, whose churn is a
//! small fraction of the queue's. VACUUM needs the right to maintain the table (its
//! owner, the database's owner or a superuser; `MAINTAIN` from PostgreSQL 17); a role
//! without it is told once, at info level, and the upkeep stops, leaving the table to
//! autovacuum.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::name::EndpointName;

/// When the endpoint vacuums its queue.
#[derive(Debug, Clone)]
pub struct UpkeepConfig {
    /// Messages taken by this process's workers after which it vacuums its queue; 0 turns the
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

/// How often the task looks at the count.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Whether the connected role may vacuum the table `$1` (a regclass name), as VACUUM
/// decides it: before PostgreSQL 17 the table's owner or the database's (with their
/// rights inherited; a superuser has every role's), from 17 the `MAINTAIN` privilege.
/// The 17 branch is not evaluated on older servers, which do not know the privilege.
const MAY_VACUUM: &str = "\
SELECT CASE WHEN current_setting('server_version_num')::integer >= 170000
            THEN has_table_privilege(c.oid, 'MAINTAIN')
            ELSE pg_has_role(c.relowner, 'USAGE') OR pg_has_role(d.datdba, 'USAGE')
       END
FROM pg_class AS c, pg_database AS d
WHERE c.oid = $1::text::regclass AND d.datname = current_database()";

/// Whether anyone holds table `$1`'s vacuum lock now (autovacuum, another instance's
/// upkeep, an ANALYZE). VACUUM (SKIP_LOCKED) would pass over the table then anyway, but
/// with a WARNING in the server's log each time. `pg_locks` rather than the progress
/// views, whose rows of other roles' sessions (autovacuum's) a role without
/// `pg_read_all_stats` sees with the table left out.
const VACUUM_LOCK_HELD: &str = "\
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'relation' AND relation = $1::text::regclass
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND mode = 'ShareUpdateExclusiveLock' AND granted)";

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

/// What one attempt did.
enum Attempt {
    /// Vacuumed, or skipped because the table was busy.
    Done,
    /// The role may not vacuum the table: the upkeep ends.
    NotAllowed,
    /// The endpoint is stopping.
    Stopped,
}

impl QueueUpkeep {
    /// Runs until `stop` turns true, or until it finds it may not vacuum the table.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        if self.config.every == 0 {
            debug!(endpoint = %self.endpoint, "queue upkeep off");
            return;
        }
        let mut counted_at = self.received.total();
        let mut last = Instant::now();
        let mut allowed = false;
        let mut failing = false;

        while !*stop.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_INTERVAL) => {}
                _ = stop.changed() => continue,
            }
            let received = self.received.total();
            if received - counted_at < self.config.every || last.elapsed() < self.config.min_gap {
                continue;
            }

            // After a failure too the next attempt waits for as many messages more and
            // the gap: a lasting problem costs one attempt per round, not one a check.
            counted_at = received;
            last = Instant::now();
            match self.vacuum(&mut allowed, &mut stop).await {
                Ok(Attempt::Done) => failing = false,
                Ok(Attempt::NotAllowed | Attempt::Stopped) => return,
                Err(error) => {
                    let text = crate::error::chain(&error);
                    // The workers report an outage; a lasting failure of another kind is
                    // told once, then quietly until an attempt succeeds.
                    if error.is_connection_problem() || failing {
                        debug!(endpoint = %self.endpoint, error = %text, "queue vacuum failed");
                    } else {
                        warn!(endpoint = %self.endpoint, error = %text,
                            "queue vacuum failed; trying again after the next round");
                    }
                    failing = true;
                }
            }
        }
    }

    /// One attempt: checks the right until it is confirmed, then vacuums unless the
    /// table is busy.
    async fn vacuum(
        &self,
        allowed: &mut bool,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Attempt> {
        let client = self.pool.get().await?;
        if !*allowed {
            let may: Option<bool> = client
                .query_one(MAY_VACUUM, &[&self.queue])
                .await
                .map_err(Error::db("check the right to vacuum the queue"))?
                .get(0);
            if may != Some(true) {
                info!(endpoint = %self.endpoint, queue = %self.queue,
                    "queue upkeep off: this role may not vacuum the queue table (not its \
                     owner); autovacuum alone keeps it");
                return Ok(Attempt::NotAllowed);
            }
            *allowed = true;
        }

        let busy: bool = client
            .query_one(VACUUM_LOCK_HELD, &[&self.queue])
            .await
            .map_err(Error::db("check for a vacuum of the queue"))?
            .get(0);
        if busy {
            debug!(endpoint = %self.endpoint, queue = %self.queue,
                "the queue's vacuum lock is held already; skipping this round");
            return Ok(Attempt::Done);
        }

        // The pool's statement timeout is for business statements; a vacuum of a queue
        // swollen by an outage's backlog may need longer, and cancelled it would only
        // start over next round.
        client
            .batch_execute("SET statement_timeout = 0")
            .await
            .map_err(Error::db("lift the statement timeout for the vacuum"))?;
        let started = Instant::now();
        let sql = crate::sql::queue::vacuum(&self.queue);
        let vacuumed = tokio::select! {
            vacuumed = client.batch_execute(&sql) => vacuumed,
            _ = stop.changed() => {
                // Shutting down: the connection, mid-statement, never goes back to the
                // pool; the server finishes the vacuum on its own, which harms nothing.
                drop(Object::take(client));
                return Ok(Attempt::Stopped);
            }
        };
        let reset = client.batch_execute("RESET statement_timeout").await;
        if reset.is_err() {
            // Never hand a connection without its timeout back to the pool.
            drop(Object::take(client));
        }
        vacuumed.map_err(Error::db(format!("vacuum {}", self.queue)))?;
        reset.map_err(Error::db("restore the statement timeout"))?;
        debug!(endpoint = %self.endpoint, queue = %self.queue,
            ms = started.elapsed().as_millis() as u64, "vacuumed the queue");
        Ok(Attempt::Done)
    }
}
