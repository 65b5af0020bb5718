//! The due-message mover: moves deferred messages from an endpoint's delayed table into
//! its queue when they fall due.
//!
//! A deferred send writes straight into the destination's delayed table, so delivery
//! never depends on the sender still running. Every instance of an endpoint runs one
//! mover; they share the work through SKIP LOCKED. A mover sleeps until the earliest due
//! time or a notification that a delayed row was written, whichever comes first, never on
//! a fixed short poll; the database clock decides what is due.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::name::EndpointName;
use crate::outage::{Backoff, Outage};
use crate::sql::QueueStatements;
use crate::wakeup::Notifier;

/// Rows moved per statement.
const MOVE_BATCH: i64 = 500;

/// Moves due rows for one endpoint.
pub(crate) struct DueMessageMover {
    pub endpoint: EndpointName,
    pub pool: Pool,
    pub statements: Arc<QueueStatements>,
    pub notifier: Option<Notifier>,
    /// The longest sleep between looks at the table, in case a notification was lost.
    pub max_sleep: Duration,
    pub outage: Outage,
}

impl DueMessageMover {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut wake: watch::Receiver<u64>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut wake_closed = false;
        let mut reported_down = false;

        while !*stop.borrow() {
            wake.borrow_and_update();
            let sleep = match self.move_due().await {
                Ok(next) => {
                    backoff.reset();
                    if reported_down {
                        self.outage.restored("mover");
                        reported_down = false;
                    }
                    match next {
                        Some(wait) if wait.is_zero() => continue,
                        Some(wait) => wait.min(self.max_sleep),
                        None => self.max_sleep,
                    }
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    let text = crate::error::chain(&error);
                    if error.is_connection_problem() {
                        self.outage.lost("mover", &text);
                        reported_down = true;
                    } else {
                        warn!(endpoint = %self.endpoint, error = %text,
                            retry_in_ms = delay.as_millis() as u64, "moving due messages failed");
                    }
                    delay
                }
            };

            let woken = async {
                if wake_closed {
                    std::future::pending::<bool>().await
                } else {
                    wake.changed().await.is_ok()
                }
            };
            tokio::select! {
                open = woken => wake_closed = !open,
                _ = tokio::time::sleep(sleep) => {}
                _ = stop.changed() => {}
            }
        }
        debug!(endpoint = %self.endpoint, "due-message mover stopped");
    }

    /// Moves every due row; returns how long until the next one is due (zero when more
    /// are due now), or `None` when the table is empty.
    async fn move_due(&self) -> Result<Option<Duration>> {
        let client = self.pool.get().await?;
        let move_due = client
            .prepare_cached(&self.statements.move_due)
            .await
            .map_err(Error::db("prepare move due"))?;
        let moved = client
            .execute(&move_due, &[&MOVE_BATCH])
            .await
            .map_err(Error::db(format!("move due messages of {}", self.endpoint)))?;
        if moved > 0 {
            debug!(endpoint = %self.endpoint, moved, "moved due messages into the queue");
            if let Some(notifier) = &self.notifier {
                notifier.mark(&self.endpoint);
            }
        }
        if moved as i64 == MOVE_BATCH {
            return Ok(Some(Duration::ZERO));
        }

        let next_due = client
            .prepare_cached(&self.statements.next_due_ms)
            .await
            .map_err(Error::db("prepare next due"))?;
        let row = client
            .query_one(&next_due, &[])
            .await
            .map_err(Error::db(format!("next due time of {}", self.endpoint)))?;
        let ms: Option<i64> = row.get(0);
        Ok(ms.map(|ms| Duration::from_millis(ms.max(0) as u64)))
    }
}
