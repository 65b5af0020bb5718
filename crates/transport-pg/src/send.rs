//! Sending: building envelopes, the routing table, and writing rows to destinations.
//!
//! A send is an INSERT into the destination's queue table, inside whatever transaction
//! the caller has open: a handler's receive transaction, a client's own business
//! transaction, or one the [`Sender`] opens for a single send. Several messages to one
//! destination are one `unnest` statement. Nothing here creates a queue: a destination
//! that is not installed is an [`Error::EndpointNotInstalled`] naming it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;
use message::{Message, MessageKind};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::connect::Database;
use crate::envelope::{CONTENT_TYPE_MSGPACK, Headers, encode_body, format_rfc3339, header};
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::name::EndpointName;
use crate::sql;
use crate::subscriptions::{Publication, SubscriberCache};
use crate::wakeup::Notifier;

/// The default limit on an encoded body: 4 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Which endpoint owns each command type.
#[derive(Debug, Clone, Default)]
pub struct Routes(HashMap<String, EndpointName>);

impl Routes {
    /// An empty table.
    pub fn new() -> Self {
        Routes::default()
    }

    /// Routes command `M` to `endpoint`. Events are refused: they go to subscribers.
    pub fn add<M: Message>(&mut self, endpoint: &str) -> Result<()> {
        if M::KIND == MessageKind::Event {
            return Err(Error::Config(format!(
                "{} is an event; events are published to subscribers, not routed",
                M::NAME
            )));
        }
        self.add_name(M::NAME, endpoint)
    }

    /// Routes the type named `message_type` to `endpoint`, for tools that know types only
    /// by name.
    pub fn add_name(&mut self, message_type: &str, endpoint: &str) -> Result<()> {
        if !message::is_valid_type_name(message_type) {
            return Err(Error::InvalidTypeName {
                name: message_type.to_owned(),
            });
        }
        self.0
            .insert(message_type.to_owned(), EndpointName::new(endpoint)?);
        Ok(())
    }

    /// The endpoint that owns `message_type`.
    pub fn get(&self, message_type: &str) -> Option<&EndpointName> {
        self.0.get(message_type)
    }
}

/// When a message becomes visible to its receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// At the commit of the sending transaction.
    Now,
    /// This long after the commit, by the database's clock.
    After(Duration),
    /// At this time.
    At(SystemTime),
}

/// One message ready to be written: its destination, id, headers and body.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub destination: EndpointName,
    pub message_id: Uuid,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub delivery: Delivery,
    /// Set on saga timeouts, so completing the saga can delete them.
    pub saga_id: Option<Uuid>,
}

/// What every envelope a sender builds has in common.
#[derive(Debug)]
pub(crate) struct Origin {
    /// The endpoint or standalone sender name, for `sending_endpoint`.
    pub name: String,
    /// Where replies go; `None` for a standalone sender with no queue.
    pub reply_to: Option<EndpointName>,
    pub host: String,
    pub routes: Routes,
    pub max_body: usize,
    /// Headers put on every message, such as a run id.
    pub extra_headers: Headers,
    /// Subscriber lists for publishing.
    pub subscribers: SubscriberCache,
}

impl Origin {
    /// Builds the envelope for `message` to `destination` (or its route), caused by the
    /// message with `cause` headers when sent from a handler.
    pub fn envelope<M: Message>(
        &self,
        message: &M,
        destination: Option<&str>,
        intent: &str,
        cause: Option<&Headers>,
    ) -> Result<Outgoing> {
        let destination = match destination {
            Some(name) => EndpointName::new(name)?,
            None => self
                .routes
                .get(M::NAME)
                .cloned()
                .ok_or_else(|| Error::NoRoute {
                    message_type: M::NAME.to_owned(),
                })?,
        };
        self.envelope_for(message, destination, intent, cause)
    }

    /// Builds the envelope for `message` to a destination already resolved.
    pub fn envelope_for<M: Message>(
        &self,
        message: &M,
        destination: EndpointName,
        intent: &str,
        cause: Option<&Headers>,
    ) -> Result<Outgoing> {
        let body = encode_body(message, self.max_body)?;
        let message_id = Uuid::new_v4();

        let mut headers = self.extra_headers.clone();
        if let Some(cause) = cause {
            inherit(&mut headers, cause);
        }
        let id = message_id.to_string();
        if headers.get(header::CONVERSATION_ID).is_none() {
            headers.insert(header::CONVERSATION_ID, id.clone());
        }
        headers.insert(header::MESSAGE_ID, id);
        headers.insert_static(header::MESSAGE_TYPE, M::NAME);
        headers.insert(header::INTENT, intent);
        headers.insert(header::CONTENT_TYPE, CONTENT_TYPE_MSGPACK);
        headers.insert(header::SENDING_ENDPOINT, self.name.as_str());
        headers.insert(header::SENDING_HOST, self.host.as_str());
        headers.insert(header::TIME_SENT, format_rfc3339(SystemTime::now()));
        if let Some(reply_to) = &self.reply_to {
            headers.insert(header::REPLY_TO, reply_to.as_str());
        }

        Ok(Outgoing {
            destination,
            message_id,
            headers,
            body,
            delivery: Delivery::Now,
            saga_id: None,
        })
    }
}

/// Copies what flows from a message to the messages its handler sends: the conversation,
/// the cause, the trace context and every `baggage.` header.
fn inherit(headers: &mut Headers, cause: &Headers) {
    for (name, value) in cause.iter() {
        let flows = name.starts_with(header::BAGGAGE_PREFIX)
            || name == header::CONVERSATION_ID
            || name == header::TRACEPARENT
            || name == header::TRACESTATE;
        if flows {
            headers.insert(name, value);
        }
    }
    if let Some(id) = cause.get(header::MESSAGE_ID) {
        headers.insert(header::RELATED_TO, id);
    }
}

/// A destination table written to, for the wake-ups after commit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Written {
    pub destination: EndpointName,
    /// The delayed table rather than the queue.
    pub delayed: bool,
}

/// One statement of a write: every message for one table, as column arrays.
pub(crate) struct TableWrite<'a> {
    pub target: Written,
    ids: Vec<Uuid>,
    headers: Vec<&'a Headers>,
    bodies: Vec<&'a [u8]>,
    due_at: Vec<Option<SystemTime>>,
    delay_ms: Vec<i64>,
    saga_ids: Vec<Option<Uuid>>,
}

impl Written {
    /// The table `outgoing` goes to.
    pub(crate) fn of(outgoing: &Outgoing) -> Written {
        Written {
            destination: outgoing.destination.clone(),
            delayed: outgoing.delivery != Delivery::Now,
        }
    }

    /// Whether `outgoing` goes to this table (without building its [`Written`]).
    pub(crate) fn is(&self, outgoing: &Outgoing) -> bool {
        self.delayed == (outgoing.delivery != Delivery::Now)
            && self.destination == outgoing.destination
    }
}

/// The insert statement of `target`'s table.
pub(crate) fn insert_sql(target: &Written) -> String {
    let tables = target.destination.tables();
    if target.delayed {
        sql::delayed::insert(&tables.delayed)
    } else {
        sql::queue::insert(&tables.queue)
    }
}

/// The one statement that writes every table of `targets` (two or more, in that order):
/// each table's insert as a data-modifying CTE, its parameters numbered on from the one
/// before. PostgreSQL answers it once, where one insert per table is one answer each.
pub(crate) fn combined_insert_sql(targets: &[Written]) -> String {
    let mut sql = String::from("WITH ");
    let mut first = 1;
    for (i, target) in targets.iter().enumerate() {
        let tables = target.destination.tables();
        let (insert, count) = if target.delayed {
            let insert = sql::delayed::insert_from(&tables.delayed, first);
            (insert, sql::delayed::INSERT_PARAMS)
        } else {
            (
                sql::queue::insert_from(&tables.queue, first),
                sql::queue::INSERT_PARAMS,
            )
        };
        if i > 0 {
            sql.push_str(",\n");
        }
        sql.push_str(&format!("w{i} AS (\n{insert}\n)"));
        first += count;
    }
    sql.push_str("\nSELECT 1");
    sql
}

/// The tables `messages` go to, in first-seen order: the order of [`plan_writes`].
pub(crate) fn targets_of<'a>(messages: impl IntoIterator<Item = &'a Outgoing>) -> Vec<Written> {
    let mut targets: Vec<Written> = Vec::new();
    for message in messages {
        if !targets.iter().any(|target| target.is(message)) {
            targets.push(Written::of(message));
        }
    }
    targets
}

/// Groups `messages` by table, in first-seen order, one statement per table.
pub(crate) fn plan_writes(messages: &[Outgoing]) -> Vec<TableWrite<'_>> {
    let mut writes: Vec<TableWrite<'_>> = Vec::new();
    for message in messages {
        let position = writes.iter().position(|w| w.target.is(message));
        let write = match position {
            Some(i) => &mut writes[i],
            None => {
                writes.push(TableWrite {
                    target: Written::of(message),
                    ids: Vec::new(),
                    headers: Vec::new(),
                    bodies: Vec::new(),
                    due_at: Vec::new(),
                    delay_ms: Vec::new(),
                    saga_ids: Vec::new(),
                });
                writes.last_mut().expect("just pushed")
            }
        };
        write.ids.push(message.message_id);
        write.headers.push(&message.headers);
        write.bodies.push(&message.body);
        match message.delivery {
            Delivery::Now => {}
            Delivery::After(delay) => {
                write.due_at.push(None);
                write
                    .delay_ms
                    .push(delay.as_millis().min(i64::MAX as u128) as i64);
            }
            Delivery::At(at) => {
                write.due_at.push(Some(at));
                write.delay_ms.push(0);
            }
        }
        write.saga_ids.push(message.saga_id);
    }
    writes
}

/// Prepares every statement of `writes` (from the cache, after the first time), so that
/// running them afterwards sends each request on its first poll, in order.
pub(crate) async fn prepare_writes(
    exec: &impl Executor,
    writes: &[TableWrite<'_>],
) -> Result<Vec<tokio_postgres::Statement>> {
    let mut statements = Vec::with_capacity(writes.len());
    for write in writes {
        let statement = exec
            .prepare_statement(&insert_sql(&write.target))
            .await
            .map_err(|source| send_error(&write.target.destination, source))?;
        statements.push(statement);
    }
    Ok(statements)
}

/// Runs prepared writes together, pipelined: every request goes out before any answer
/// is awaited.
pub(crate) async fn run_writes(
    exec: &impl Executor,
    writes: &[TableWrite<'_>],
    statements: &[tokio_postgres::Statement],
) -> Result<()> {
    let runs = writes
        .iter()
        .zip(statements)
        .map(|(write, statement)| async move {
            let mut params = Vec::with_capacity(sql::delayed::INSERT_PARAMS);
            write.push_params(&mut params);
            exec.execute_statement(statement, &params)
                .await
                .map_err(|source| send_error(&write.target.destination, source))
        });
    for result in join_in_order(runs.collect()).await {
        result?;
    }
    Ok(())
}

/// Runs `writes` as their one [`combined_insert_sql`] statement, prepared as `statement`.
/// Each table was prepared alone first, so a table that is not installed has already
/// been named; a failure here names every destination.
pub(crate) async fn run_combined(
    exec: &impl Executor,
    writes: &[TableWrite<'_>],
    statement: &tokio_postgres::Statement,
) -> Result<()> {
    let mut params = Vec::with_capacity(sql::delayed::INSERT_PARAMS * writes.len());
    for write in writes {
        write.push_params(&mut params);
    }
    match exec.execute_statement(statement, &params).await {
        Ok(_) => Ok(()),
        Err(source) => {
            let names: Vec<String> = writes
                .iter()
                .map(|w| w.target.destination.to_string())
                .collect();
            Err(Error::Database {
                op: format!("send to {}", names.join(", ")),
                source,
            })
        }
    }
}

impl<'a> TableWrite<'a> {
    /// This write's parameters, in the order of its table's insert.
    fn push_params<'p>(&'p self, params: &mut Vec<&'p (dyn ToSql + Sync)>) {
        if self.target.delayed {
            params.extend([
                &self.due_at as &(dyn ToSql + Sync),
                &self.delay_ms,
                &self.ids,
                &self.headers,
                &self.bodies,
                &self.saga_ids,
            ]);
        } else {
            params.extend([
                &self.ids as &(dyn ToSql + Sync),
                &self.headers,
                &self.bodies,
            ]);
        }
    }
}

/// Polls every future in index order on every poll until all are done. Unlike the
/// general joins, which may poll a large set in any order or stop part-way to yield, this
/// sends every request on the first poll and in order, which the pipelined COMMIT behind
/// these writes relies on.
pub(crate) async fn join_in_order<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(
                outputs
                    .iter_mut()
                    .map(|o| o.take().expect("every output set"))
                    .collect(),
            )
        }
    })
    .await
}

/// Writes `messages`, one statement per table, pipelined; returns the tables written,
/// for the wake-ups after commit.
pub(crate) async fn write_outgoing(
    exec: &impl Executor,
    messages: &[Outgoing],
) -> Result<Vec<Written>> {
    let writes = plan_writes(messages);
    let statements = prepare_writes(exec, &writes).await?;
    run_writes(exec, &writes, &statements).await?;
    Ok(writes.into_iter().map(|w| w.target).collect())
}

/// Maps a failed insert to [`Error::EndpointNotInstalled`] when the table is missing.
pub(crate) fn send_error(destination: &EndpointName, source: tokio_postgres::Error) -> Error {
    if source.code().map(|c| c.code()) == Some("42P01") {
        return Error::EndpointNotInstalled {
            endpoint: destination.to_string(),
        };
    }
    Error::Database {
        op: format!("send to {destination}"),
        source,
    }
}

/// A sender with no queue of its own, such as a client or a tool: it holds a routing
/// table and a pool, and wakes the destinations it wrote to after each commit.
///
/// Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Sender {
    inner: Arc<SenderInner>,
}

struct SenderInner {
    origin: Arc<Origin>,
    pool: Pool,
    notifier: Option<Notifier>,
}

/// Builds a [`Sender`].
pub struct SenderBuilder {
    db: Database,
    name: String,
    routes: Routes,
    headers: Headers,
    max_body: usize,
    pool_size: usize,
    wakeups: bool,
}

impl SenderBuilder {
    /// Routes command `M` to `endpoint`.
    pub fn route<M: Message>(mut self, endpoint: &str) -> Result<Self> {
        self.routes.add::<M>(endpoint)?;
        Ok(self)
    }

    /// Puts `name: value` on every message this sender sends.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Refuses bodies over `bytes` (default [`DEFAULT_MAX_BODY_BYTES`]).
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The pool's size (default 4).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Whether to notify destinations after each commit (default on).
    pub fn wakeups(mut self, on: bool) -> Self {
        self.wakeups = on;
        self
    }

    /// Builds the sender; connections are made on first use.
    pub fn build(self) -> Result<Sender> {
        let pool = self
            .db
            .pool(&format!("pgbus sender {}", self.name), self.pool_size)?;
        let outage = crate::outage::Outage::new(&self.name);
        let notifier = self
            .wakeups
            .then(|| Notifier::start(self.db.clone(), outage));
        Ok(Sender {
            inner: Arc::new(SenderInner {
                origin: Arc::new(Origin {
                    name: self.name,
                    reply_to: None,
                    host: crate::host_name(),
                    routes: self.routes,
                    max_body: self.max_body,
                    extra_headers: self.headers,
                    subscribers: SubscriberCache::default(),
                }),
                pool,
                notifier,
            }),
        })
    }
}

impl Sender {
    /// Starts building a sender that calls itself `name` in `sending_endpoint`.
    pub fn builder(db: &Database, name: &str) -> SenderBuilder {
        SenderBuilder {
            db: db.clone(),
            name: name.to_owned(),
            routes: Routes::new(),
            headers: Headers::new(),
            max_body: DEFAULT_MAX_BODY_BYTES,
            pool_size: 4,
            wakeups: true,
        }
    }

    pub(crate) fn from_parts(origin: Arc<Origin>, pool: Pool, notifier: Option<Notifier>) -> Self {
        Sender {
            inner: Arc::new(SenderInner {
                origin,
                pool,
                notifier,
            }),
        }
    }

    /// Sends command `message` to its route in a transaction of its own.
    pub async fn send<M: Message>(&self, message: &M) -> Result<Uuid> {
        let mut outbox = self.outbox();
        let id = outbox.send(message)?;
        self.commit_alone(outbox).await?;
        Ok(id)
    }

    /// Sends `message` to `endpoint` (or its route), delivered after `delay`, in a
    /// transaction of its own.
    pub async fn defer<M: Message>(
        &self,
        endpoint: Option<&str>,
        delay: Duration,
        message: &M,
    ) -> Result<Uuid> {
        let mut outbox = self.outbox();
        let id = outbox.defer(endpoint, delay, message)?;
        self.commit_alone(outbox).await?;
        Ok(id)
    }

    /// Publishes event `message` to every subscriber in a transaction of its own.
    pub async fn publish<M: Message>(&self, message: &M) -> Result<Uuid> {
        let mut outbox = self.outbox();
        let id = outbox.publish(message)?;
        self.commit_alone(outbox).await?;
        Ok(id)
    }

    /// Sends `message` to `endpoint` in a transaction of its own.
    pub async fn send_to<M: Message>(&self, endpoint: &str, message: &M) -> Result<Uuid> {
        let mut outbox = self.outbox();
        let id = outbox.send_to(endpoint, message)?;
        self.commit_alone(outbox).await?;
        Ok(id)
    }

    /// An empty outbox, for sending inside a transaction of the caller's.
    pub fn outbox(&self) -> Outbox {
        Outbox {
            sender: self.clone(),
            messages: Vec::new(),
            publications: Vec::new(),
        }
    }

    /// Sends now the wake-ups of every message committed so far, instead of leaving them
    /// to the background notifier; call it before a short-lived process exits, or its
    /// receivers find the last messages only at their next poll.
    pub async fn flush_wakeups(&self) -> Result<()> {
        let Some(notifier) = &self.inner.notifier else {
            return Ok(());
        };
        let client = self.inner.pool.get().await?;
        notifier.flush(&client).await
    }

    /// The sender's pool, for callers that want their business writes in the same
    /// transaction as their sends.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    async fn commit_alone(&self, mut outbox: Outbox) -> Result<()> {
        let mut client = self.inner.pool.get().await?;
        let tx = client
            .transaction()
            .await
            .map_err(Error::db("send: begin"))?;
        outbox.write(&tx).await?;
        tx.commit().await.map_err(Error::db("send: commit"))?;
        outbox.committed();
        Ok(())
    }
}

/// Messages collected for one transaction of the caller's: [`write`](Outbox::write)
/// them inside it, commit, then call [`committed`](Outbox::committed) so that the
/// destinations are woken.
///
/// ```no_run
/// # async fn example(sender: transport_pg::Sender, msg: impl message::Message)
/// # -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = sender.pool().get().await?;
/// let tx = client.transaction().await?;
/// tx.execute("INSERT INTO retail.placed (order_id) VALUES ($1)", &[&"o-1"]).await?;
/// let mut outbox = sender.outbox();
/// outbox.send(&msg)?;
/// outbox.write(&tx).await?;
/// tx.commit().await?;
/// outbox.committed();
/// # Ok(()) }
/// ```
pub struct Outbox {
    sender: Sender,
    messages: Vec<Outgoing>,
    publications: Vec<Publication>,
}

impl Outbox {
    /// Adds command `message`, to its route.
    pub fn send<M: Message>(&mut self, message: &M) -> Result<Uuid> {
        self.push(message, None, Headers::new())
    }

    /// Adds `message` for `endpoint`.
    pub fn send_to<M: Message>(&mut self, endpoint: &str, message: &M) -> Result<Uuid> {
        self.push(message, Some(endpoint), Headers::new())
    }

    /// Adds `message` for `endpoint` (or its route) with extra headers.
    pub fn send_with<M: Message>(
        &mut self,
        endpoint: Option<&str>,
        message: &M,
        headers: Headers,
    ) -> Result<Uuid> {
        self.push(message, endpoint, headers)
    }

    /// Adds `message` for `endpoint` (or its route), delivered after `delay`.
    pub fn defer<M: Message>(
        &mut self,
        endpoint: Option<&str>,
        delay: Duration,
        message: &M,
    ) -> Result<Uuid> {
        self.push_at(message, endpoint, Headers::new(), Delivery::After(delay))
    }

    /// Adds `message` for `endpoint` (or its route), delivered at `at`.
    pub fn defer_until<M: Message>(
        &mut self,
        endpoint: Option<&str>,
        at: SystemTime,
        message: &M,
    ) -> Result<Uuid> {
        self.push_at(message, endpoint, Headers::new(), Delivery::At(at))
    }

    fn push<M: Message>(&mut self, message: &M, to: Option<&str>, extra: Headers) -> Result<Uuid> {
        self.push_at(message, to, extra, Delivery::Now)
    }

    fn push_at<M: Message>(
        &mut self,
        message: &M,
        to: Option<&str>,
        extra: Headers,
        delivery: Delivery,
    ) -> Result<Uuid> {
        let mut outgoing = self
            .sender
            .inner
            .origin
            .envelope(message, to, "send", None)?;
        outgoing.delivery = delivery;
        for (name, value) in extra.iter() {
            outgoing.headers.insert(name, value);
        }
        let id = outgoing.message_id;
        self.messages.push(outgoing);
        Ok(id)
    }

    /// Adds event `message`, one copy per subscriber of its type.
    pub fn publish<M: Message>(&mut self, message: &M) -> Result<Uuid> {
        let origin = &self.sender.inner.origin;
        // The destination is a placeholder; each subscriber's copy replaces it.
        let placeholder = EndpointName::new("unrouted")?;
        let template = origin.envelope_for(message, placeholder, "publish", None)?;
        let id = template.message_id;
        self.publications.push(Publication {
            message_type: M::NAME.to_owned(),
            template,
        });
        Ok(id)
    }

    /// How many messages and publications are in it.
    pub fn len(&self) -> usize {
        self.messages.len() + self.publications.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes every message inside the caller's open transaction; publications become
    /// one copy per subscriber, as the subscriptions stand now.
    pub async fn write(&mut self, exec: &impl Executor) -> Result<()> {
        let publications = std::mem::take(&mut self.publications);
        let copies = self
            .sender
            .inner
            .origin
            .subscribers
            .expand(exec, publications)
            .await?;
        self.messages.extend(copies);
        write_outgoing(exec, &self.messages).await?;
        Ok(())
    }

    /// Tells the sender the transaction committed, so it wakes the destinations.
    pub fn committed(self) {
        if let Some(notifier) = &self.sender.inner.notifier {
            for message in &self.messages {
                if message.delivery == Delivery::Now {
                    notifier.mark(&message.destination);
                } else {
                    notifier.mark_delayed(&message.destination);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, delayed: bool) -> Written {
        Written {
            destination: EndpointName::new(name).unwrap(),
            delayed,
        }
    }

    #[test]
    fn a_combined_insert_numbers_each_tables_parameters_on_from_the_last() {
        let targets = [table("a", false), table("b", true), table("c", false)];
        let sql = combined_insert_sql(&targets);

        // Every parameter of the three inserts appears, each once, in order.
        let numbers: Vec<usize> = sql
            .split('$')
            .skip(1)
            .map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().unwrap()
            })
            .collect();
        let total = 2 * sql::queue::INSERT_PARAMS + sql::delayed::INSERT_PARAMS;
        assert_eq!(numbers, (1..=total).collect::<Vec<_>>(), "{sql}");

        let a = sql.find(r#"bus."a_queue""#).expect("a's queue");
        let b = sql.find(r#"bus."b_delayed""#).expect("b's delayed table");
        let c = sql.find(r#"bus."c_queue""#).expect("c's queue");
        assert!(a < b && b < c, "tables in the order given: {sql}");
        assert_eq!(
            sql::queue::insert_from(r#"bus."a_queue""#, 1),
            sql::queue::insert(r#"bus."a_queue""#),
            "numbered from 1 it is the plain insert, the text the bench's ceiling runs"
        );
    }
}
