//! The receive pump: workers that take a batch of messages and run it as one transaction.
//!
//! Each worker loops: take up to n rows with `DELETE ... RETURNING` (SKIP LOCKED, so
//! competing consumers never take the same row), run each message's handler in a
//! savepoint of its own (taken when it first runs a statement; see [`crate::pipeline`]),
//! write the sends, and commit once. A failing handler is rolled back to its savepoint,
//! its sends dropped and its message put back, in the same transaction, with its counter
//! raised, so neither the message nor its count is ever lost. When the
//! queue is empty a worker waits for a wake-up or its poll back-off, whichever is first.
//!
//! What happens to a failed message (put back, or moved to the error queue) is decided in
//! [`crate::error_queue`] and the attempt limit of [`PumpConfig`].

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Object, Pool};
use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_postgres::Statement;
use tracing::{debug, info, trace, warn};
use uuid::Uuid;

use crate::envelope::{Headers, JsonText, header};
use crate::error::{Error, Result};
use crate::error_queue::{FailedMessage, FailureDetails, move_to_error_queue};
use crate::failure::HandlerError;
use crate::handler::{Context, ErasedHandler, Prepared, Tx};
use crate::name::EndpointName;
use crate::outage::{Backoff, Outage};
use crate::panic_location;
use crate::pipeline::Pipeline;
use crate::recoverability::{NextStep, RetryPolicy, Throttle};
use crate::send::{Delivery, Origin, Outgoing, Written, write_outgoing};
use crate::sql::{self, QueueStatements, Receive};
use crate::upkeep::ReceivedCount;
use crate::wakeup::Notifier;

/// How the pump takes and retries messages.
#[derive(Debug, Clone)]
pub struct PumpConfig {
    /// Messages per transaction, 1 to 50.
    pub batch_size: usize,
    /// Worker tasks, each with its own connection while it holds a batch.
    pub concurrency: usize,
    /// Retries before a failing message goes to the error queue.
    pub retry: RetryPolicy,
    /// Consecutive failures that start the outage throttle (0: never).
    pub throttle_after: u32,
    /// The pause between messages while throttled.
    pub throttle_pause: Duration,
    /// The longest idle poll interval; the back-off doubles up to it from 1 ms, or from
    /// 250 ms while the wake-up listener listens.
    pub idle_poll_max: Duration,
}

impl Default for PumpConfig {
    fn default() -> Self {
        PumpConfig {
            batch_size: 1,
            concurrency: 4,
            retry: RetryPolicy::default(),
            throttle_after: 40,
            throttle_pause: Duration::from_secs(1),
            idle_poll_max: Duration::from_secs(1),
        }
    }
}

/// The first idle poll after a batch when nothing listens for wake-ups: the poll is all
/// there is, so it starts short and doubles up to `idle_poll_max`.
const POLLING_FIRST_POLL: Duration = Duration::from_millis(1);

/// The first idle poll after a batch while the listener listens. Every commit to the queue
/// is followed by a notification within milliseconds, so the poll only bounds what a lost
/// one costs; starting it at 1 ms here made every handled message cost about two empty
/// receives (BEGIN, the receive and ROLLBACK each) on an endpoint with gaps in its traffic.
const LISTENING_FIRST_POLL: Duration = Duration::from_millis(250);

/// Full batches in a row after which a batch-1 worker wakes another: one message says
/// little about what is behind it, and on a queue with gaps in its traffic waking a second
/// worker after every message only adds an empty receive.
const FULL_RUN_AT_BATCH_ONE: u32 = 2;

/// The receive position is forgotten at least this often, because a row with a lower seq
/// can commit after a higher one, or come back after a rollback.
const POSITION_RESET_INTERVAL: Duration = Duration::from_millis(100);

/// How long a connection's transactions may follow one another, each begun by the last
/// one's COMMIT, before one commit goes without the next BEGIN. PostgreSQL reports a
/// backend's table statistics (the deleted rows that autovacuum waits for) only while it
/// is idle outside a transaction, at most once a second; a worker that always chained
/// would keep them unreported as long as its queue stays busy, and the queue table would
/// never be vacuumed. Half a second makes the report at most about a second late.
const CHAIN_LIMIT: Duration = Duration::from_millis(500);

/// Everything the workers of one endpoint share; read-only once built.
pub(crate) struct Pump {
    pub endpoint: EndpointName,
    pub pool: Pool,
    pub statements: Arc<QueueStatements>,
    pub handlers: HashMap<String, Arc<dyn ErasedHandler>>,
    pub origin: Arc<Origin>,
    pub notifier: Option<Notifier>,
    pub config: PumpConfig,
    pub careful: CarefulMode,
    /// The advisory lock class of this endpoint's claims.
    pub claim_class: i32,
    /// Messages received, for the queue upkeep.
    pub received: ReceivedCount,
    pub throttle: Throttle,
    pub outage: Outage,
    /// Wakes one idle worker: for each wake-up of the endpoint's queue (see
    /// [`relay_wakeups`](Pump::relay_wakeups)), and from a worker whose batch came back
    /// full, since more may be waiting. Waking one at a time, rather than every idle
    /// worker at each notification, spares the server a herd of empty receives.
    pub work: tokio::sync::Notify,
    /// Whether the endpoint's wake-up listener is listening (always false without
    /// wake-ups); while it is, the idle poll starts at [`LISTENING_FIRST_POLL`].
    pub listening: Arc<AtomicBool>,
}

/// Whether the pump is still in the careful mode it starts in, and the run of successes
/// that ends it. Shared by the workers; each success may end it.
pub(crate) struct CarefulMode {
    pub active: AtomicBool,
    pub successes: AtomicU32,
    /// One message at a time across the process: if a handler kills the process, only
    /// its own message was in flight, and only its claim count rises.
    pub one_at_a_time: tokio::sync::Mutex<()>,
}

impl CarefulMode {
    pub fn new() -> Self {
        CarefulMode {
            active: AtomicBool::new(true),
            successes: AtomicU32::new(0),
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }
}

/// Claims after which a message goes to the error queue: each claim that did not end in
/// a commit or a counted failure is a process that died handling it.
pub const CLAIM_LIMIT: i32 = 3;

/// Messages seen through to a commit that end the careful mode.
const CAREFUL_RUN: u32 = 20;

/// One row as the receive statement returned it.
struct Received {
    seq: i64,
    message_id: Uuid,
    raw_headers: JsonText,
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

/// A message ready for its handler: headers, type name, handler, decoded value.
type Ready = (Headers, String, Arc<dyn ErasedHandler>, Prepared);

/// The receive to send behind a batch's COMMIT: the statement, and the seq to probe from.
struct NextReceive<'s> {
    statement: &'s Statement,
    position: i64,
}

/// Where a worker's next receive starts: after the last seq of its last full batch, or
/// from the start of the queue after a short batch, a wake-up, and at least every
/// [`POSITION_RESET_INTERVAL`]. The interval is counted from the probes actually sent, so
/// a receive sent from inside a batch (behind its COMMIT) and one sent by the worker loop
/// keep one clock.
struct Probe {
    after: i64,
    from_start_at: Instant,
}

impl Probe {
    fn new() -> Probe {
        Probe {
            after: 0,
            from_start_at: Instant::now(),
        }
    }

    /// The seq after which the receive about to be sent starts.
    fn start(&mut self) -> i64 {
        if self.from_start_at.elapsed() >= POSITION_RESET_INTERVAL {
            self.restart();
        }
        self.after
    }

    /// A full batch ended at `seq`; more may follow it.
    fn continue_after(&mut self, seq: i64) {
        self.after = seq;
    }

    /// The next receive starts from the start of the queue.
    fn restart(&mut self) {
        self.after = 0;
        self.from_start_at = Instant::now();
    }
}

/// What a receive's query returned.
type ReceiveResult = std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>;

/// What one receive did.
struct BatchOutcome {
    taken: usize,
    last_seq: i64,
}

/// A pooled connection inside our own transaction. Dropped while still open (a worker
/// cancelled at shutdown, an error mid-batch), it takes the connection out of the pool
/// and closes it, so the server rolls back and no half-done transaction is ever handed
/// to another worker.
struct OpenTx {
    client: Option<Object>,
    /// When this connection's chain of transactions began (see [`CHAIN_LIMIT`]).
    chained_since: Option<Instant>,
    /// The rows of this transaction's receive, when it went out behind the previous
    /// batch's COMMIT (see [`Pipeline::commit`]).
    received: Option<Vec<tokio_postgres::Row>>,
}

impl OpenTx {
    /// Wraps a connection on which BEGIN is about to be sent (possibly pipelined).
    fn new(client: Object) -> OpenTx {
        OpenTx {
            client: Some(client),
            chained_since: None,
            received: None,
        }
    }

    /// Whether this transaction's COMMIT may carry the next BEGIN.
    fn may_chain(&self) -> bool {
        self.chained_since
            .is_none_or(|since| since.elapsed() < CHAIN_LIMIT)
    }

    async fn begin(client: Object) -> Result<OpenTx> {
        let open = OpenTx::new(client);
        open.client()
            .batch_execute("BEGIN")
            .await
            .map_err(Error::db("begin"))?;
        Ok(open)
    }

    fn client(&self) -> &Object {
        self.client.as_ref().expect("client present until finished")
    }

    /// The transaction ended on the server (COMMIT went out in a pipeline); the
    /// connection goes back to the pool.
    fn finished(mut self) {
        self.client.take();
    }

    async fn commit(self) -> Result<()> {
        self.end("COMMIT").await
    }

    /// Outside any transaction: drops the careful mode's advisory locks and returns the
    /// connection to the pool.
    async fn release_claims(self) -> Result<()> {
        self.end(sql::queue::CLAIM_RELEASE).await
    }

    async fn rollback(self) -> Result<()> {
        self.end("ROLLBACK").await
    }

    async fn end(mut self, sql: &str) -> Result<()> {
        let client = self.client.take().expect("client present until finished");
        match client.batch_execute(sql).await {
            Ok(()) => Ok(()),
            Err(source) => {
                // The transaction's fate is unknown to us; do not reuse the connection.
                let _ = Object::take(client);
                Err(Error::Database {
                    op: sql.to_lowercase(),
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

/// Why a pipelined batch did not commit.
enum PipelineError {
    /// A statement in it failed; the batch is rolled back and retaken one by one.
    Failed(Error),
    /// The connection is gone; everything rolled back on the server.
    Lost(Error),
}

impl From<Error> for PipelineError {
    fn from(error: Error) -> Self {
        match &error {
            Error::Database { source, .. } if source.is_closed() => PipelineError::Lost(error),
            Error::Pool { .. } => PipelineError::Lost(error),
            _ => PipelineError::Failed(error),
        }
    }
}

/// Ends the transaction a worker holds begun, if any, returning its connection.
async fn release(held: &mut Option<OpenTx>) {
    if let Some(tx) = held.take() {
        // On failure the connection is discarded, which also ends the transaction.
        let _ = tx.rollback().await;
    }
}

impl Pump {
    /// Wakes one idle worker for each wake-up of the queue, until the listener stops
    /// (then the workers poll) or `stop` turns true.
    pub async fn relay_wakeups(
        self: Arc<Self>,
        mut wake: watch::Receiver<u64>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                changed = wake.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.work.notify_one();
                }
                _ = stop.changed() => return,
            }
        }
    }

    /// Runs one worker until `stop` turns true; an in-flight batch is finished first.
    pub async fn run_worker(self: Arc<Self>, worker: usize, mut stop: watch::Receiver<bool>) {
        let first_poll = || {
            let first = if self.listening.load(Ordering::Relaxed) {
                LISTENING_FIRST_POLL
            } else {
                POLLING_FIRST_POLL
            };
            first.min(self.config.idle_poll_max)
        };
        let mut idle = first_poll();
        let mut full_run = 0u32;
        let mut probe = Probe::new();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let task = format!("worker {worker}");
        let mut reported_down = false;
        // A connection whose next transaction is already begun: a busy worker's commit
        // carries the next BEGIN (see `receive_up_to`).
        let mut held: Option<OpenTx> = None;

        while !*stop.borrow() {
            let careful = self.careful.active.load(Ordering::Relaxed);
            let throttled = self.throttle.is_active();
            if careful || throttled {
                release(&mut held).await;
            }
            let received = if careful {
                self.receive_careful(probe.start()).await
            } else if throttled {
                self.receive_throttled(&mut probe).await
            } else {
                self.receive_batch(&mut probe, &mut held).await
            };
            match received {
                Ok(outcome) => {
                    backoff.reset();
                    if reported_down {
                        self.outage.restored(&task);
                        reported_down = false;
                    }
                    let asked = if careful || throttled {
                        1
                    } else {
                        self.config.batch_size
                    };
                    if outcome.taken == asked {
                        // More may be waiting: take the next batch at once, and share the
                        // backlog with one more worker once it looks like one.
                        probe.continue_after(outcome.last_seq);
                        full_run += 1;
                        let evidence = if asked == 1 { FULL_RUN_AT_BATCH_ONE } else { 1 };
                        if full_run >= evidence {
                            self.work.notify_one();
                        }
                        idle = first_poll();
                        continue;
                    }

                    // A short batch emptied what this worker could see. Whatever commits
                    // after its receive sends a wake-up (one that came while the batch ran
                    // left a permit), so it waits rather than probing again at once.
                    probe.restart();
                    full_run = 0;
                    if outcome.taken > 0 {
                        idle = first_poll();
                    }
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    let text = crate::error::chain(&error);
                    if error.is_connection_problem() {
                        // Logged once per outage by the tracker, not on every attempt.
                        self.outage.lost(&task, &text);
                        reported_down = true;
                        debug!(endpoint = %self.endpoint, worker, error = %text,
                            retry_in_ms = delay.as_millis() as u64, "receive failed");
                    } else {
                        warn!(endpoint = %self.endpoint, worker, error = %text,
                            retry_in_ms = delay.as_millis() as u64, "receive failed");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
            }

            // A wake-up that came while this worker was busy left a permit, so it is
            // not missed here.
            tokio::select! {
                _ = self.work.notified() => {
                    probe.restart();
                    idle = first_poll();
                }
                _ = tokio::time::sleep(idle) => {
                    idle = (idle * 2).min(self.config.idle_poll_max);
                }
                _ = stop.changed() => {}
            }
        }
        release(&mut held).await;
        debug!(endpoint = %self.endpoint, worker, "worker stopped");
    }

    /// Takes up to a batch after `position` and runs it as one pipelined transaction;
    /// if anything in the pipeline fails, rolls it back and retakes the same messages
    /// one at a time, unpipelined, so the failing one is isolated. `held` is a
    /// connection whose transaction is already begun, used instead of a new one; a full
    /// batch leaves one there again.
    async fn receive_batch(
        &self,
        probe: &mut Probe,
        held: &mut Option<OpenTx>,
    ) -> Result<BatchOutcome> {
        self.receive_up_to(&self.statements.receive, probe, Some(held))
            .await
    }

    /// Takes up to `statement`'s limit from where `probe` says, as
    /// [`receive_batch`](Self::receive_batch) does. With `chain`, a batch that commits
    /// sends the next BEGIN with its COMMIT and leaves the connection in `chain` for the
    /// next receive: one statement fewer per batch, and PostgreSQL flushes its socket once
    /// per statement, so one write fewer on each side. Only a full batch chains; after a
    /// short one the worker may go idle, and an idle worker holds no transaction. A chain
    /// ends after [`CHAIN_LIMIT`], so the server can report the table statistics
    /// autovacuum needs. The next batch's receive goes out behind the COMMIT, from this
    /// batch's last seq or, when its reset is due, from the start.
    async fn receive_up_to(
        &self,
        statement: &Receive,
        probe: &mut Probe,
        mut chain: Option<&mut Option<OpenTx>>,
    ) -> Result<BatchOutcome> {
        let held = chain.as_mut().and_then(|held| held.take());
        let begun = held.is_some();
        let mut tx = match held {
            Some(tx) => tx,
            None => OpenTx::new(self.pool.get().await?),
        };
        let receive = tx
            .client()
            .prepare_cached(&statement.sql)
            .await
            .map_err(Error::db(format!("prepare receive for {}", self.endpoint)))?;

        let rows = if let Some(rows) = tx.received.take() {
            Ok(rows)
        } else {
            let position = probe.start();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&position];
            if begun {
                tx.client().query(&receive, &params).await
            } else {
                // BEGIN and the receive in one round trip; `biased` polls in order, so
                // the requests go out in order, BEGIN first.
                let (begun, rows) = tokio::join!(
                    biased;
                    tx.client().batch_execute("BEGIN"),
                    tx.client().query(&receive, &params),
                );
                begun.map_err(Error::db("begin"))?;
                rows
            }
        };
        let rows = rows.map_err(Error::db(format!("receive from {}", self.endpoint)))?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(BatchOutcome {
                taken: 0,
                last_seq: 0,
            });
        }

        let batch = self.prepare_batch(&rows);
        let taken = batch.len();
        let last_seq = batch.iter().map(|(r, _)| r.seq).max().unwrap_or(0);
        let seqs: Vec<i64> = batch.iter().map(|(r, _)| r.seq).collect();
        let chain = chain.filter(|_| taken == statement.limit && tx.may_chain());
        let next = chain.is_some().then(|| {
            probe.continue_after(last_seq);
            NextReceive {
                statement: &receive,
                position: probe.start(),
            }
        });

        match self.run_pipelined(&tx, batch, next).await {
            Ok((written, next_rows)) => {
                self.wake(written);
                match (chain, next_rows) {
                    (Some(held), Some(Ok(rows))) => {
                        tx.chained_since.get_or_insert_with(Instant::now);
                        tx.received = Some(rows);
                        *held = Some(tx);
                    }
                    (_, Some(Err(error))) => {
                        // The batch is committed; the receive behind it failed in the
                        // next transaction, which is ended here. The worker's next
                        // receive starts afresh and reports a lasting problem.
                        debug!(endpoint = %self.endpoint, error = %error,
                            "receive sent behind a commit failed");
                        let _ = tx.rollback().await;
                    }
                    _ => tx.finished(),
                }
            }
            Err(PipelineError::Lost(error)) => return Err(error),
            Err(PipelineError::Failed(error)) => {
                debug!(
                    endpoint = %self.endpoint,
                    error = %crate::error::chain(&error),
                    messages = taken,
                    "pipelined batch failed; retaking its messages one at a time"
                );
                // Also ends the transaction a chained BEGIN may have opened.
                tx.rollback().await?;
                self.retake(&seqs).await?;
            }
        }
        Ok(BatchOutcome { taken, last_seq })
    }

    /// While throttled: one message at a time across the process, then a pause.
    async fn receive_throttled(&self, probe: &mut Probe) -> Result<BatchOutcome> {
        let _alone = self.throttle.one_at_a_time.lock().await;
        if !self.throttle.is_active() {
            return Ok(BatchOutcome {
                taken: 1,
                last_seq: probe.after,
            });
        }
        let outcome = self
            .receive_up_to(&self.statements.receive_one, probe, None)
            .await?;
        if outcome.taken > 0 && self.throttle.is_active() {
            tokio::time::sleep(self.throttle.pause).await;
        }
        Ok(outcome)
    }

    /// Decodes rows, sorts them by seq and then (stably) by lock key.
    fn prepare_batch(&self, rows: &[tokio_postgres::Row]) -> Vec<(Received, Parsed)> {
        self.received.add(rows.len());
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

        let mut batch: Vec<(Received, Parsed)> = received
            .into_iter()
            .map(|r| {
                let parsed = self.parse(&r);
                (r, parsed)
            })
            .collect();
        // Batches take their locks in one order, so two of them cannot deadlock; the
        // sort is stable, so messages with one key keep their receive order.
        batch.sort_by(|a, b| lock_key(&a.1).cmp(&lock_key(&b.1)));
        batch
    }

    /// Runs a batch whose BEGIN and receive are done, through a [`Pipeline`]: nothing
    /// is waited for until the commit, except where a handler waits for its own
    /// statements. The handlers' sends go out together before the next statement that
    /// could read them, and a handler gets a savepoint only if it runs a statement. A
    /// failure anywhere fails the batch, which is then retaken one message at a time; a
    /// handler that returns an error is handled in place once the answers so far are in.
    ///
    /// With `next`, the next batch's receive goes out behind the COMMIT (see
    /// [`Pipeline::commit`]), and its rows come back with the tables written.
    async fn run_pipelined(
        &self,
        tx: &OpenTx,
        batch: Vec<(Received, Parsed)>,
        next: Option<NextReceive<'_>>,
    ) -> Result<(Vec<Written>, Option<ReceiveResult>), PipelineError> {
        let client = tx.client();
        let pipeline = Pipeline::new(client);
        let mut written = Vec::new();

        for (received, parsed) in batch {
            let Some((headers, message_type, handler, prepared)) =
                self.ready_or_poison(client, &received, parsed).await?
            else {
                continue;
            };

            pipeline.start_handler();
            let tx = Tx::pipelined(&pipeline);
            match self
                .run_handler(tx, &received, &headers, handler, prepared)
                .await
            {
                Ok(outgoing) => {
                    pipeline.defer(outgoing).await?;
                    self.succeeded(&received, &message_type);
                }
                Err(failure) => {
                    // Known at once, so handled in place, once the answers so far show
                    // the transaction is still sound: undo what the handler ran (its
                    // sends were never written), put the message back, carry on.
                    pipeline.finish().await?;
                    if pipeline.handler_has_savepoint() {
                        client
                            .batch_execute("ROLLBACK TO SAVEPOINT handler")
                            .await
                            .map_err(Error::db("rollback to savepoint"))?;
                    }
                    let put_back = self
                        .put_back_or_fail(client, &received, headers, &message_type, &failure)
                        .await?;
                    written.extend(put_back);
                }
            }
        }
        let position = next.as_ref().map_or(0, |next| next.position);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&position];
        let next_receive = next.map(|next| client.query(next.statement, &params));
        let (committed, next_rows) = pipeline.commit(next_receive).await;
        committed?;
        // The handlers' sends went to the tables the pipeline prepared inserts for.
        written.extend(pipeline.tables_written());
        Ok((written, next_rows))
    }

    /// Takes the messages with `seqs` again (those still there) and runs them one at a
    /// time in one transaction, every statement awaited, so a failure is pinned on the
    /// message that caused it.
    async fn retake(&self, seqs: &[i64]) -> Result<()> {
        let client = self.pool.get().await?;
        let tx = OpenTx::begin(client).await?;
        let statement = tx
            .client()
            .prepare_cached(&self.statements.take_seqs)
            .await
            .map_err(Error::db("prepare retake"))?;
        let rows = tx
            .client()
            .query(&statement, &[&seqs])
            .await
            .map_err(Error::db(format!("retake from {}", self.endpoint)))?;

        let mut written = Vec::new();
        for (received, parsed) in self.prepare_batch(&rows) {
            let handled = self.handle_one(tx.client(), &received, parsed).await?;
            written.extend(handled);
        }
        tx.commit().await?;
        self.wake(written);
        Ok(())
    }

    /// The careful mode after start-up: claim one message in a commit of its own, then
    /// handle it alone. A message claimed more than [`CLAIM_LIMIT`] times has killed its
    /// process that often and goes to the error queue instead.
    async fn receive_careful(&self, position: i64) -> Result<BatchOutcome> {
        let _alone = self.careful.one_at_a_time.lock().await;
        if !self.careful.active.load(Ordering::Relaxed) {
            // Another worker ended the careful mode while this one waited.
            return Ok(BatchOutcome {
                taken: 1,
                last_seq: position,
            });
        }
        let client = self.pool.get().await?;
        let claim = client
            .prepare_cached(&self.statements.claim_next)
            .await
            .map_err(Error::db("prepare claim"))?;
        // From here the connection may hold advisory locks: only an OpenTx (which closes
        // it when dropped) or an explicit release may let it go back to the pool.
        let tx = OpenTx::new(client);
        let claimed = tx
            .client()
            .query_opt(&claim, &[&position, &self.claim_class])
            .await
            .map_err(Error::db(format!("claim from {}", self.endpoint)))?;
        let Some(row) = claimed else {
            tx.release_claims().await?;
            return Ok(BatchOutcome {
                taken: 0,
                last_seq: position,
            });
        };
        let seq: i64 = row.get(0);
        let claims: i32 = row.get(1);

        tx.client()
            .batch_execute("BEGIN")
            .await
            .map_err(Error::db("begin"))?;
        let take = tx
            .client()
            .prepare_cached(&self.statements.take_seqs)
            .await
            .map_err(Error::db("prepare take"))?;
        let rows = tx
            .client()
            .query(&take, &[&vec![seq]])
            .await
            .map_err(Error::db(format!(
                "take claimed row from {}",
                self.endpoint
            )))?;

        let mut written = Vec::new();
        for (received, parsed) in self.prepare_batch(&rows) {
            if claims > CLAIM_LIMIT {
                self.claim_limit_reached(tx.client(), &received, parsed, claims)
                    .await?;
                continue;
            }
            let handled = self.handle_one(tx.client(), &received, parsed).await?;
            written.extend(handled);
        }
        tx.client()
            .batch_execute("COMMIT")
            .await
            .map_err(Error::db("commit"))?;
        tx.release_claims().await?;
        self.wake(written);
        self.careful_message_done();
        if self.throttle.is_active() {
            tokio::time::sleep(self.throttle.pause).await;
        }
        Ok(BatchOutcome {
            taken: 1,
            last_seq: seq,
        })
    }

    async fn claim_limit_reached(
        &self,
        client: &Object,
        received: &Received,
        parsed: Parsed,
        claims: i32,
    ) -> Result<()> {
        let (headers, message_type) = match parsed {
            Parsed::Ready {
                headers,
                message_type,
                ..
            } => (Some(headers), Some(message_type)),
            Parsed::Poison {
                headers,
                message_type,
                ..
            } => (headers, message_type),
        };
        let reason = format!(
            "claimed {claims} times without its handling ever finishing: it most likely \
             kills the process that handles it"
        );
        let details = FailureDetails::poison(message_type.as_deref(), "claim_limit", reason);
        self.poison(
            client,
            received,
            headers.as_ref(),
            message_type.as_deref(),
            &details,
        )
        .await
    }

    /// Handles one message unpipelined in a savepoint: the handler, then its sends and
    /// the release, each awaited; any failure rolls back to the savepoint and puts the
    /// message back. An `Err` means the transaction itself is lost.
    async fn handle_one(
        &self,
        client: &Object,
        received: &Received,
        parsed: Parsed,
    ) -> Result<Vec<Written>> {
        let Some((headers, message_type, handler, prepared)) =
            self.ready_or_poison(client, received, parsed).await?
        else {
            return Ok(Vec::new());
        };

        client
            .batch_execute("SAVEPOINT handler")
            .await
            .map_err(Error::db("savepoint"))?;
        let outcome = match self
            .run_handler(Tx::new(client), received, &headers, handler, prepared)
            .await
        {
            Ok(outgoing) => write_outgoing(client, &outgoing)
                .await
                .map_err(HandlerError::from),
            Err(failure) => Err(failure),
        };

        let failure = match outcome {
            Ok(written) => match client.batch_execute("RELEASE SAVEPOINT handler").await {
                Ok(()) => {
                    self.succeeded(received, &message_type);
                    return Ok(written);
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

        // A handler failure must not lose the message or its attempt count: everything
        // it did rolls back to the savepoint, and the message goes back in this same
        // transaction with its counter raised.
        client
            .batch_execute("ROLLBACK TO SAVEPOINT handler; RELEASE SAVEPOINT handler")
            .await
            .map_err(Error::db("rollback to savepoint"))?;
        let put_back = self
            .put_back_or_fail(client, received, headers, &message_type, &failure)
            .await?;
        Ok(put_back)
    }

    /// A decoded message ready for its handler; poison goes to the error queue and
    /// yields `None`.
    async fn ready_or_poison(
        &self,
        client: &Object,
        received: &Received,
        parsed: Parsed,
    ) -> Result<Option<Ready>> {
        match parsed {
            Parsed::Ready {
                headers,
                message_type,
                handler,
                prepared,
            } => Ok(Some((headers, message_type, handler, prepared))),
            Parsed::Poison {
                headers,
                message_type,
                details,
            } => {
                let (headers, message_type) = (headers.as_ref(), message_type.as_deref());
                self.poison(client, received, headers, message_type, &details)
                    .await?;
                Ok(None)
            }
        }
    }

    /// Runs the handler, catching a panic; returns the messages it sent, with every
    /// publication expanded into one copy per subscriber.
    async fn run_handler(
        &self,
        tx: Tx<'_>,
        received: &Received,
        headers: &Headers,
        handler: Arc<dyn ErasedHandler>,
        prepared: Prepared,
    ) -> Result<Vec<Outgoing>, HandlerError> {
        let client = tx.client();
        let mut ctx = Context::new(tx, headers, received.message_id, &self.origin);
        let result = AssertUnwindSafe(handler.call(prepared.value, &mut ctx))
            .catch_unwind()
            .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(failure)) => return Err(failure),
            Err(payload) => {
                return Err(HandlerError::from_panic(&*payload, panic_location::take()));
            }
        }

        let mut outgoing = std::mem::take(&mut ctx.outgoing);
        let publications = std::mem::take(&mut ctx.publications);
        drop(ctx);
        if !publications.is_empty() {
            let copies = self.origin.subscribers.expand(client, publications).await?;
            outgoing.extend(copies);
        }
        Ok(outgoing)
    }

    /// Counts a message the careful mode saw through to a commit, handled or counted as
    /// failed: either way its process survived it. After a run of them the careful mode
    /// ends. (A counted failure is no sign of a process-killing message, so it does not
    /// restart the run; an endpoint whose provider is failing would otherwise never
    /// leave the careful mode.)
    fn careful_message_done(&self) {
        let run = self.careful.successes.fetch_add(1, Ordering::Relaxed) + 1;
        if run >= CAREFUL_RUN && self.careful.active.swap(false, Ordering::Relaxed) {
            info!(
                endpoint = %self.endpoint,
                messages = run,
                "leaving careful mode; receiving in batches"
            );
        }
    }

    /// Counts a success: it ends the outage throttle.
    fn succeeded(&self, received: &Received, message_type: &str) {
        self.throttle.succeeded(self.endpoint.as_str());
        trace!(
            target: "pgbus::handled",
            endpoint = %self.endpoint,
            message_id = %received.message_id,
            message_type,
            "handled"
        );
    }

    async fn poison(
        &self,
        client: &Object,
        received: &Received,
        headers: Option<&Headers>,
        message_type: Option<&str>,
        details: &FailureDetails,
    ) -> Result<()> {
        let raw_headers = received.raw_headers.to_value();
        let failed = FailedMessage {
            message_id: received.message_id,
            message_type,
            headers,
            raw_headers: &raw_headers,
            body: &received.body,
            enqueued_at: Some(received.enqueued_at),
        };
        move_to_error_queue(client, &self.endpoint, &failed, details).await
    }

    /// Notifies the tables written by a committed transaction.
    fn wake(&self, mut written: Vec<Written>) {
        let Some(notifier) = &self.notifier else {
            return;
        };
        written.sort();
        written.dedup();
        for target in &written {
            if target.delayed {
                notifier.mark_delayed(&target.destination);
            } else {
                notifier.mark(&target.destination);
            }
        }
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

        let mut headers = match Headers::from_json_text(&received.raw_headers.0) {
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

    /// Puts a failed message back with its counters raised: into the queue for an
    /// immediate retry, into the delayed table for a delayed one, or into the error
    /// queue when its retries are used up or its failure is permanent.
    async fn put_back_or_fail(
        &self,
        client: &Object,
        received: &Received,
        mut headers: Headers,
        message_type: &str,
        failure: &HandlerError,
    ) -> Result<Vec<Written>> {
        self.throttle.failed(self.endpoint.as_str());
        let failed_attempts = headers.counter(header::FAILED_ATTEMPTS) + 1;
        headers.insert(header::FAILED_ATTEMPTS, failed_attempts.to_string());

        let step = self
            .config
            .retry
            .next_step(failed_attempts, failure.is_permanent());
        let delivery = match step {
            NextStep::Fail => {
                let details = FailureDetails::from_handler(message_type, failure);
                let raw_headers = received.raw_headers.to_value();
                let failed = FailedMessage {
                    message_id: received.message_id,
                    message_type: Some(message_type),
                    headers: Some(&headers),
                    raw_headers: &raw_headers,
                    body: &received.body,
                    enqueued_at: Some(received.enqueued_at),
                };
                move_to_error_queue(client, &self.endpoint, &failed, &details).await?;
                return Ok(Vec::new());
            }
            NextStep::RetryNow => Delivery::Now,
            NextStep::RetryAfter(delay) => {
                let rounds = headers.counter(header::DELAYED_RETRIES) + 1;
                headers.insert(header::DELAYED_RETRIES, rounds.to_string());
                Delivery::After(delay)
            }
        };

        warn!(
            endpoint = %self.endpoint,
            message_id = %received.message_id,
            message_type,
            attempt = failed_attempts,
            tries = self.config.retry.total_tries(),
            delay_ms = match delivery {
                Delivery::After(d) => d.as_millis() as u64,
                _ => 0,
            },
            error_kind = failure.kind(),
            error = %failure,
            "handler failed; message put back for another attempt"
        );
        let again = Outgoing {
            destination: self.endpoint.clone(),
            message_id: received.message_id,
            headers,
            body: received.body.clone(),
            delivery,
            saga_id: None,
        };
        write_outgoing(client, std::slice::from_ref(&again)).await
    }
}

fn lock_key(parsed: &Parsed) -> Option<&str> {
    match parsed {
        Parsed::Ready { prepared, .. } => prepared.lock_key.as_deref(),
        Parsed::Poison { .. } => None,
    }
}
