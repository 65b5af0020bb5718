//! The receive pump: workers that take a batch of messages and run it as one transaction.
//!
//! Each worker loops: take up to n rows with `DELETE ... RETURNING` (SKIP LOCKED, so
//! competing consumers never take the same row), run each message's handler in its own
//! savepoint, write its sends inside that savepoint, and commit once. A failing handler
//! is rolled back to its savepoint and its message put back, in the same transaction,
//! with its counter raised, so neither the message nor its count is ever lost. When the
//! queue is empty a worker waits for a wake-up or its poll back-off, whichever is first.
//!
//! What happens to a failed message (put back, or moved to the error queue) is decided in
//! [`crate::error_queue`] and the attempt limit of [`PumpConfig`].

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Object, Pool};
use futures_util::FutureExt;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, trace, warn};
use uuid::Uuid;

use crate::envelope::{Headers, header};
use crate::error::{Error, Result};
use crate::error_queue::{FailedMessage, FailureDetails, move_to_error_queue};
use crate::failure::HandlerError;
use crate::handler::{Context, ErasedHandler, Prepared};
use crate::name::EndpointName;
use crate::panic_location;
use crate::send::{Origin, Outgoing, write_outgoing};
use crate::sql::QueueStatements;
use crate::wakeup::Notifier;

/// How the pump takes and retries messages.
#[derive(Debug, Clone)]
pub struct PumpConfig {
    /// Messages per transaction, 1 to 50.
    pub batch_size: usize,
    /// Worker tasks, each with its own connection while it holds a batch.
    pub concurrency: usize,
    /// Attempts before a failing message goes to the error queue.
    pub max_attempts: u32,
    /// The longest idle poll interval; the back-off doubles up to it from 1 ms.
    pub idle_poll_max: Duration,
}

impl Default for PumpConfig {
    fn default() -> Self {
        PumpConfig {
            batch_size: 1,
            concurrency: 4,
            max_attempts: 5,
            idle_poll_max: Duration::from_secs(1),
        }
    }
}

/// The receive position is forgotten at least this often, because a row with a lower seq
/// can commit after a higher one, or come back after a rollback.
const POSITION_RESET_INTERVAL: Duration = Duration::from_millis(100);

/// Everything the workers of one endpoint share; read-only once built.
pub(crate) struct Pump {
    pub endpoint: EndpointName,
    pub pool: Pool,
    pub statements: QueueStatements,
    pub handlers: HashMap<String, Arc<dyn ErasedHandler>>,
    pub origin: Arc<Origin>,
    pub notifier: Option<Notifier>,
    pub config: PumpConfig,
}

/// One row as the receive statement returned it.
struct Received {
    seq: i64,
    message_id: Uuid,
    raw_headers: Value,
    body: Vec<u8>,
    enqueued_at: SystemTime,
}

/// A received message after decoding: ready for its handler, or poison.
enum Parsed {
    Ready {
        headers: Headers,
        message_type: String,
        handler: Arc<dyn ErasedHandler>,
        prepared: Prepared,
    },
    Poison {
        headers: Option<Headers>,
        message_type: Option<String>,
        details: FailureDetails,
    },
}

/// What one receive did.
struct BatchOutcome {
    taken: usize,
    last_seq: i64,
}

/// A pooled connection inside our own BEGIN. Dropped without [`commit`](OpenTx::commit)
/// (a worker cancelled at shutdown, an error mid-batch), it takes the connection out of
/// the pool and closes it, so the server rolls back and no half-done transaction is ever
/// handed to another worker.
struct OpenTx {
    client: Option<Object>,
}

impl OpenTx {
    async fn begin(client: Object) -> Result<OpenTx> {
        let open = OpenTx {
            client: Some(client),
        };
        open.client()
            .batch_execute("BEGIN")
            .await
            .map_err(Error::db("begin"))?;
        Ok(open)
    }

    fn client(&self) -> &Object {
        self.client.as_ref().expect("client present until commit")
    }

    async fn commit(mut self) -> Result<()> {
        let client = self.client.take().expect("client present until commit");
        match client.batch_execute("COMMIT").await {
            Ok(()) => Ok(()),
            Err(source) => {
                // The transaction's fate is unknown to us; do not reuse the connection.
                let _ = Object::take(client);
                Err(Error::Database {
                    op: "commit".to_owned(),
                    source,
                })
            }
        }
    }
}

impl Drop for OpenTx {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

impl Pump {
    /// Runs one worker until `stop` turns true; an in-flight batch is finished first.
    pub async fn run_worker(
        self: Arc<Self>,
        worker: usize,
        mut wake: watch::Receiver<u64>,
        mut stop: watch::Receiver<bool>,
    ) {
        let min_idle = Duration::from_millis(1);
        let mut idle = min_idle;
        let mut position = 0i64;
        let mut last_reset = Instant::now();
        let mut error_backoff = Duration::from_millis(100);
        let mut wake_closed = false;

        while !*stop.borrow() {
            // Marks the current wake-up as seen, so one arriving during the receive below
            // is not missed by the wait after it.
            wake.borrow_and_update();
            if last_reset.elapsed() >= POSITION_RESET_INTERVAL {
                position = 0;
                last_reset = Instant::now();
            }

            match self.receive_batch(position).await {
                Ok(outcome) => {
                    error_backoff = Duration::from_millis(100);
                    if outcome.taken < self.config.batch_size {
                        position = 0;
                        last_reset = Instant::now();
                    } else {
                        position = outcome.last_seq;
                    }
                    if outcome.taken > 0 {
                        idle = min_idle;
                        continue;
                    }
                }
                Err(error) => {
                    warn!(
                        endpoint = %self.endpoint,
                        worker,
                        error = %crate::error::chain(&error),
                        retry_in_ms = error_backoff.as_millis() as u64,
                        "receive failed"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(error_backoff) => {}
                        _ = stop.changed() => {}
                    }
                    error_backoff = (error_backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }

            let woken = async {
                if wake_closed {
                    std::future::pending::<bool>().await
                } else {
                    wake.changed().await.is_ok()
                }
            };
            tokio::select! {
                open = woken => {
                    if open {
                        position = 0;
                        idle = min_idle;
                    } else {
                        // The listener has stopped (shutdown): poll until told to stop.
                        wake_closed = true;
                    }
                }
                _ = tokio::time::sleep(idle) => {
                    idle = (idle * 2).min(self.config.idle_poll_max);
                }
                _ = stop.changed() => {}
            }
        }
        debug!(endpoint = %self.endpoint, worker, "worker stopped");
    }

    /// Takes up to a batch after `position` and runs it in one transaction.
    async fn receive_batch(&self, position: i64) -> Result<BatchOutcome> {
        let client = self.pool.get().await?;
        let tx = OpenTx::begin(client).await?;

        let limit = self.config.batch_size as i64;
        let statement = tx
            .client()
            .prepare_cached(&self.statements.receive)
            .await
            .map_err(Error::db(format!("prepare receive for {}", self.endpoint)))?;
        let rows = tx
            .client()
            .query(&statement, &[&position, &limit])
            .await
            .map_err(Error::db(format!("receive from {}", self.endpoint)))?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(BatchOutcome {
                taken: 0,
                last_seq: position,
            });
        }

        let mut received: Vec<Received> = rows
            .iter()
            .map(|row| Received {
                seq: row.get(0),
                message_id: row.get(1),
                raw_headers: row.get(2),
                body: row.get(3),
                enqueued_at: row.get(4),
            })
            .collect();
        received.sort_by_key(|r| r.seq);
        let taken = received.len();
        let last_seq = received.last().map_or(position, |r| r.seq);

        let mut batch: Vec<(Received, Parsed)> = received
            .into_iter()
            .map(|r| {
                let parsed = self.parse(&r);
                (r, parsed)
            })
            .collect();
        // Batches take their locks in one order; the sort is stable, so messages with
        // one key keep their receive order.
        batch.sort_by(|a, b| lock_key(&a.1).cmp(&lock_key(&b.1)));

        let mut woken: Vec<EndpointName> = Vec::new();
        for (received, parsed) in batch {
            match parsed {
                Parsed::Poison {
                    headers,
                    message_type,
                    details,
                } => {
                    let failed = FailedMessage {
                        message_id: received.message_id,
                        message_type: message_type.as_deref(),
                        headers: headers.as_ref(),
                        raw_headers: &received.raw_headers,
                        body: &received.body,
                        enqueued_at: Some(received.enqueued_at),
                    };
                    move_to_error_queue(tx.client(), &self.endpoint, &failed, &details).await?;
                }
                Parsed::Ready {
                    headers,
                    message_type,
                    handler,
                    prepared,
                } => {
                    let sent = self
                        .handle_one(&tx, &received, headers, &message_type, handler, prepared)
                        .await?;
                    woken.extend(sent);
                }
            }
        }

        tx.commit().await?;
        if let Some(notifier) = &self.notifier {
            woken.sort();
            woken.dedup();
            for destination in &woken {
                notifier.mark(destination);
            }
        }
        Ok(BatchOutcome { taken, last_seq })
    }

    /// Decodes a row's headers and body and finds its handler.
    fn parse(&self, received: &Received) -> Parsed {
        let poison = |headers: Option<Headers>, message_type: Option<String>, kind, reason| {
            let details = FailureDetails::poison(message_type.as_deref(), kind, reason);
            Parsed::Poison {
                headers,
                message_type,
                details,
            }
        };

        let mut headers = match Headers::from_json(&received.raw_headers) {
            Ok(headers) => headers,
            Err(reason) => {
                return poison(
                    None,
                    None,
                    "unreadable_headers",
                    format!("unreadable headers: {reason}"),
                );
            }
        };
        if headers.get(header::MESSAGE_ID).is_none() {
            headers.insert(header::MESSAGE_ID, received.message_id.to_string());
        }
        let Some(message_type) = headers.get(header::MESSAGE_TYPE).map(str::to_owned) else {
            let reason = "no message_type header".to_owned();
            return poison(Some(headers), None, "missing_message_type", reason);
        };
        let Some(handler) = self.handlers.get(&message_type).cloned() else {
            let reason = format!(
                "no handler for message type {message_type} at endpoint {}",
                self.endpoint
            );
            return poison(Some(headers), Some(message_type), "no_handler", reason);
        };
        match handler.prepare(headers.get(header::CONTENT_TYPE), &received.body) {
            Ok(prepared) => Parsed::Ready {
                headers,
                message_type,
                handler,
                prepared,
            },
            Err(reason) => poison(
                Some(headers),
                Some(message_type),
                "undecodable_body",
                reason,
            ),
        }
    }

    /// Runs one handler in a savepoint; on failure rolls back to it and puts the message
    /// back (or into the error queue) in the same transaction. Returns the destinations
    /// its sends wrote to. An `Err` means the transaction itself is lost.
    async fn handle_one(
        &self,
        tx: &OpenTx,
        received: &Received,
        headers: Headers,
        message_type: &str,
        handler: Arc<dyn ErasedHandler>,
        prepared: Prepared,
    ) -> Result<Vec<EndpointName>> {
        let client = tx.client();
        client
            .batch_execute("SAVEPOINT handler")
            .await
            .map_err(Error::db("savepoint"))?;

        let mut ctx = Context::new(client, &headers, received.message_id, &self.origin);
        let started = Instant::now();
        let result = AssertUnwindSafe(handler.call(prepared.value, &mut ctx))
            .catch_unwind()
            .await;
        let outgoing: Vec<Outgoing> = std::mem::take(&mut ctx.outgoing);
        drop(ctx);

        // A handler failure must not lose the message or its attempt count: everything
        // it did rolls back to the savepoint, and the message goes back in this same
        // transaction with its counter raised.
        let outcome = match result {
            Ok(Ok(())) => write_outgoing(client, &outgoing)
                .await
                .map_err(HandlerError::from),
            Ok(Err(failure)) => Err(failure),
            Err(payload) => Err(HandlerError::from_panic(&*payload, panic_location::take())),
        };

        let failure = match outcome {
            Ok(destinations) => match client.batch_execute("RELEASE SAVEPOINT handler").await {
                Ok(()) => {
                    trace!(
                        target: "pgbus::handled",
                        endpoint = %self.endpoint,
                        message_id = %received.message_id,
                        message_type,
                        elapsed_us = started.elapsed().as_micros() as u64,
                        "handled"
                    );
                    return Ok(destinations);
                }
                // The handler returned Ok but a statement of its failed and it swallowed
                // the error: the transaction is aborted and COMMIT would silently roll
                // back the whole batch. Count it as the handler's failure instead.
                Err(e) if e.code().map(|c| c.code()) == Some("25P02") => HandlerError::with_kind(
                    "swallowed_database_error",
                    "the handler returned success, but one of its statements failed and \
                     aborted the transaction",
                ),
                Err(source) => {
                    return Err(Error::Database {
                        op: "release savepoint".to_owned(),
                        source,
                    });
                }
            },
            Err(failure) => failure,
        };

        client
            .batch_execute("ROLLBACK TO SAVEPOINT handler; RELEASE SAVEPOINT handler")
            .await
            .map_err(Error::db("rollback to savepoint"))?;
        self.put_back_or_fail(client, received, headers, message_type, &failure)
            .await?;
        Ok(Vec::new())
    }

    /// Puts a failed message back with its counter raised, or moves it to the error
    /// queue when it is out of attempts or its failure is permanent.
    async fn put_back_or_fail(
        &self,
        client: &Object,
        received: &Received,
        mut headers: Headers,
        message_type: &str,
        failure: &HandlerError,
    ) -> Result<()> {
        let failed_attempts = headers.counter(header::FAILED_ATTEMPTS) + 1;
        headers.insert(header::FAILED_ATTEMPTS, failed_attempts.to_string());

        if failure.is_permanent() || failed_attempts >= self.config.max_attempts {
            let details = FailureDetails::from_handler(message_type, failure);
            let failed = FailedMessage {
                message_id: received.message_id,
                message_type: Some(message_type),
                headers: Some(&headers),
                raw_headers: &received.raw_headers,
                body: &received.body,
                enqueued_at: Some(received.enqueued_at),
            };
            return move_to_error_queue(client, &self.endpoint, &failed, &details).await;
        }

        warn!(
            endpoint = %self.endpoint,
            message_id = %received.message_id,
            message_type,
            attempt = failed_attempts,
            max_attempts = self.config.max_attempts,
            error_kind = failure.kind(),
            error = %failure,
            "handler failed; message put back for another attempt"
        );
        let again = Outgoing {
            destination: self.endpoint.clone(),
            message_id: received.message_id,
            headers,
            body: received.body.clone(),
        };
        write_outgoing(client, std::slice::from_ref(&again)).await?;
        Ok(())
    }
}

fn lock_key(parsed: &Parsed) -> Option<&str> {
    match parsed {
        Parsed::Ready { prepared, .. } => prepared.lock_key.as_deref(),
        Parsed::Poison { .. } => None,
    }
}
