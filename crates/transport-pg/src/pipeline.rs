//! The pipeline of one batch transaction: requests sent but not yet answered, the sends of
//! handlers that have returned, and the handler savepoint, taken only when needed.
//!
//! PostgreSQL answers every parameterised statement and every simple query with a
//! ReadyForQuery and flushes its socket there, so each one costs a write on the server and
//! a wake-up on the client, whatever the pipelining. A batch therefore sends as few as it
//! can: the sends of all its handlers go out as one statement (an insert per destination
//! table, as data-modifying CTEs when there are several), written just before the next
//! statement that could see them (a handler's first statement, or COMMIT), and a handler
//! gets its savepoint only when it first touches the transaction.
//! A handler that never does has nothing to roll back: its sends are still in memory.
//! A handler may also send a statement whose answer it does not wait for
//! ([`Tx::execute_unawaited`](crate::Tx::execute_unawaited)); it is answered like the rest.
//!
//! Every request goes out at once and its answer is checked later, oldest first; a failed
//! one fails the batch, which the pump then rolls back and retakes message by message
//! without this module (see [`crate::receive`]).
//!
//! This module owns none of BEGIN, the receive or the retake; only what happens between
//! the receive and the commit of a pipelined batch (the next batch's receive, when it is
//! handed one, it only sends behind the COMMIT).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use deadpool_postgres::Object;
use tokio_postgres::Statement;
use tokio_postgres::types::ToSql;

use crate::error::{Error, Result};
use crate::send::{
    Outgoing, Written, combined_insert_sql, insert_sql, plan_writes, run_combined, run_writes,
    send_error, targets_of,
};

/// What a handler's [`Tx`](crate::Tx) calls before each statement; a trait, so that the
/// `Tx` does not carry the pipeline's own lifetime.
pub(crate) trait Lazy: Sync {
    /// See [`Pipeline::before_statement`].
    fn before_statement(&self);

    /// See [`Pipeline::unawaited`].
    fn unawaited(&self, statement: Statement, params: Vec<Param>, op: &'static str);
}

impl Lazy for Pipeline<'_> {
    fn before_statement(&self) {
        Pipeline::before_statement(self);
    }

    fn unawaited(&self, statement: Statement, params: Vec<Param>, op: &'static str) {
        Pipeline::unawaited(self, statement, params, op);
    }
}

/// A bind parameter the pipeline keeps until its statement is sent.
pub type Param = Box<dyn ToSql + Send + Sync>;

/// `params` as the driver takes them.
pub(crate) fn param_refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|param| param.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

type Pending<'c> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'c>>;

/// The requests and deferred sends of one batch transaction on `client`.
pub(crate) struct Pipeline<'c> {
    client: &'c Object,
    state: Mutex<State<'c>>,
}

struct State<'c> {
    /// Requests sent and not yet answered, oldest first.
    in_flight: VecDeque<Pending<'c>>,
    /// The first failure found without waiting (a request that failed at once, a send
    /// whose table is unknown); it fails the batch.
    failed: Option<Error>,
    /// Sends of handlers that returned, not yet written.
    sends: Vec<Outgoing>,
    /// The prepared insert of each table written in this batch; a batch writes to few,
    /// so a list is searched faster than a map's key is built.
    inserts: Vec<(Written, Statement)>,
    /// The prepared statements that write several tables at once, by their tables.
    combined: Vec<(Vec<Written>, Statement)>,
    /// A savepoint named `handler` is open in the transaction.
    savepoint_open: bool,
    /// The running handler has its own savepoint.
    handler_savepoint: bool,
}

impl<'c> Pipeline<'c> {
    /// A pipeline on `client`, inside a transaction whose BEGIN is already sent.
    pub fn new(client: &'c Object) -> Self {
        Pipeline {
            client,
            state: Mutex::new(State {
                in_flight: VecDeque::new(),
                failed: None,
                sends: Vec::new(),
                inserts: Vec::new(),
                combined: Vec::new(),
                savepoint_open: false,
                handler_savepoint: false,
            }),
        }
    }

    /// The connection the batch runs on.
    pub fn client(&self) -> &'c Object {
        self.client
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<'c>> {
        self.state.lock().expect("pipeline lock poisoned")
    }

    /// Sends `future`'s requests now, without waiting: it is polled once, which puts its
    /// requests on the connection, and kept until [`finish`](Pipeline::finish) collects
    /// its answer. The future must send everything on that first poll.
    fn launch(&self, future: impl Future<Output = Result<()>> + Send + 'c) {
        let mut future: Pending<'c> = Box::pin(future);
        // The waker of this first poll is never used: `finish` polls it again with its own.
        let first = future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
        let mut state = self.state();
        match first {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(error)) => {
                state.failed.get_or_insert(error);
            }
            Poll::Pending => state.in_flight.push_back(future),
        }
    }

    /// Waits for every answer, in the order sent; the first failure is returned.
    pub async fn finish(&self) -> Result<()> {
        loop {
            let next = {
                let mut state = self.state();
                if let Some(error) = state.failed.take() {
                    return Err(error);
                }
                match state.in_flight.pop_front() {
                    Some(next) => next,
                    None => return Ok(()),
                }
            };
            next.await?;
        }
    }

    /// Marks the start of the next handler: it has no savepoint of its own yet.
    pub fn start_handler(&self) {
        self.state().handler_savepoint = false;
    }

    /// Whether the handler that just ran took a savepoint (touched the transaction).
    pub fn handler_has_savepoint(&self) -> bool {
        self.state().handler_savepoint
    }

    /// Keeps a returned handler's sends for the batch's next write. Their inserts are
    /// prepared now (from the connection's cache after the first time), so that the
    /// write itself can go out without waiting: each table's alone, which names a table
    /// that is not installed, and, when the pending sends go to several tables, the one
    /// statement that writes them all.
    pub async fn defer(&self, outgoing: Vec<Outgoing>) -> Result<()> {
        if outgoing.is_empty() {
            return Ok(());
        }
        for message in &outgoing {
            let known = self
                .state()
                .inserts
                .iter()
                .any(|(target, _)| target.is(message));
            if known {
                continue;
            }
            let target = Written::of(message);
            let statement = self
                .client
                .prepare_cached(&insert_sql(&target))
                .await
                .map_err(|source| send_error(&target.destination, source))?;
            self.state().inserts.push((target, statement));
        }

        let targets = targets_of(self.state().sends.iter().chain(&outgoing));
        let known = targets.len() < 2
            || self
                .state()
                .combined
                .iter()
                .any(|(tables, _)| *tables == targets);
        if !known {
            let statement = self
                .client
                .prepare_cached(&combined_insert_sql(&targets))
                .await
                .map_err(Error::db("prepare a send to several tables"))?;
            self.state().combined.push((targets, statement));
        }
        self.state().sends.extend(outgoing);
        Ok(())
    }

    /// Every table the deferred sends of this batch went to.
    pub fn tables_written(&self) -> Vec<Written> {
        let state = self.state();
        state
            .inserts
            .iter()
            .map(|(target, _)| target.clone())
            .collect()
    }

    /// Called before each statement a handler runs: the first time for a handler, the
    /// sends so far are written (the handler may read them) and its savepoint is taken,
    /// both sent without waiting, ahead of the handler's statement. Anything that fails
    /// here fails the batch; the handler's statement then fails too.
    pub fn before_statement(&self) {
        let command = {
            let mut state = self.state();
            if state.handler_savepoint {
                return;
            }
            state.handler_savepoint = true;
            let open = std::mem::replace(&mut state.savepoint_open, true);
            if open {
                "RELEASE SAVEPOINT handler; SAVEPOINT handler"
            } else {
                "SAVEPOINT handler"
            }
        };
        self.write_sends();
        self.launch_simple(command, "savepoint");
    }

    /// Sends a handler's statement whose answer it does not wait for, behind its
    /// savepoint; the answer is read with the batch's others, and an error fails the
    /// batch. See [`Tx::execute_unawaited`](crate::Tx::execute_unawaited) for why only
    /// an error the server raises can.
    pub fn unawaited(&self, statement: Statement, params: Vec<Param>, op: &'static str) {
        self.before_statement();
        let client = self.client;
        self.launch(async move {
            let refs = param_refs(&params);
            client
                .execute(&statement, &refs)
                .await
                .map_err(Error::db(op))?;
            Ok(())
        });
    }

    /// Sends `sql` as a simple query, without waiting; `op` names it in an error.
    fn launch_simple(&self, sql: &'static str, op: &'static str) {
        let client = self.client;
        self.launch(async move { client.batch_execute(sql).await.map_err(Error::db(op)) });
    }

    /// Sends the deferred sends without waiting: one statement for all their tables, or
    /// one insert per table should that statement be missing.
    fn write_sends(&self) {
        let (sends, prepared) = {
            let mut state = self.state();
            let sends = std::mem::take(&mut state.sends);
            if sends.is_empty() {
                return;
            }
            let prepared = state.statements_for(&targets_of(&sends));
            (sends, prepared)
        };
        let client = self.client;
        self.launch(async move {
            let writes = plan_writes(&sends);
            match prepared {
                Some(Prepared::Combined(statement)) => {
                    run_combined(client, &writes, &statement).await
                }
                Some(Prepared::Each(statements)) => run_writes(client, &writes, &statements).await,
                None => Err(Error::Config(
                    "internal: a deferred send was not prepared".into(),
                )),
            }
        });
    }

    /// Writes the deferred sends and commits, then checks every answer. With `next`, the
    /// next transaction's BEGIN goes out with the COMMIT, and `next` (the next batch's
    /// receive) right behind them, before any answer is awaited: the server then has the
    /// receive before it answers the commit, so a busy worker costs one round trip a
    /// batch, not two, and neither side sleeps in between. `next`'s output is returned
    /// when it was sent; it runs in the new transaction, so a caller that does not use
    /// its rows (the commit failed) rolls them back with that transaction.
    ///
    /// COMMIT of a transaction that a failed statement aborted answers like a rollback,
    /// not an error, so it is not sent once a failure is known, and when a handler
    /// touched the transaction it goes behind a RELEASE, which does fail in an aborted
    /// transaction (a handler that swallowed its statement's error).
    pub async fn commit<F: Future>(&self, next: Option<F>) -> (Result<()>, Option<F::Output>) {
        self.write_sends();
        let begin_next = next.is_some();
        let tail = {
            let state = self.state();
            match (state.failed.is_some(), state.savepoint_open, begin_next) {
                (true, _, _) => None,
                (false, true, true) => Some("RELEASE SAVEPOINT handler; COMMIT; BEGIN"),
                (false, true, false) => Some("RELEASE SAVEPOINT handler; COMMIT"),
                (false, false, true) => Some("COMMIT; BEGIN"),
                (false, false, false) => Some("COMMIT"),
            }
        };
        let Some(tail) = tail else {
            return (self.finish().await, None);
        };
        self.launch_simple(tail, "commit");

        let mut next = next.map(Box::pin);
        // Polled once to put its request on the connection behind the COMMIT; the waker
        // is never used, as in `launch`.
        let early = next
            .as_mut()
            .map(|next| next.as_mut().poll(&mut Context::from_waker(Waker::noop())));
        let committed = self.finish().await;
        let output = match (next, early) {
            (_, Some(Poll::Ready(output))) => Some(output),
            (Some(next), _) => Some(next.await),
            (None, _) => None,
        };
        (committed, output)
    }
}

/// The prepared statements of one write.
enum Prepared {
    /// One statement for every table.
    Combined(Statement),
    /// Each table's insert, in the write's order.
    Each(Vec<Statement>),
}

impl State<'_> {
    /// The statements that write `targets`, from those [`Pipeline::defer`] prepared.
    fn statements_for(&self, targets: &[Written]) -> Option<Prepared> {
        if targets.len() >= 2 {
            let combined = self.combined.iter().find(|(tables, _)| tables == targets);
            if let Some((_, statement)) = combined {
                return Some(Prepared::Combined(statement.clone()));
            }
        }
        let each = targets.iter().map(|target| {
            let found = self.inserts.iter().find(|(table, _)| table == target);
            found.map(|(_, statement)| statement.clone())
        });
        each.collect::<Option<Vec<_>>>().map(Prepared::Each)
    }
}
