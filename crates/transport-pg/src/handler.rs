//! The handler trait and the context a handler runs with.
//!
//! A handler gets the decoded message and a [`Context`]: the message's headers, the
//! receive transaction (through [`Tx`]) for business writes, and send. Everything it does
//! commits or rolls back with the receive of the message: the host gives the handler a
//! savepoint of its own (in a pipelined batch, just before its first statement) and
//! writes its sends after it returns, before anything that could read them.

use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use message::Message;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};
use uuid::Uuid;

use crate::envelope::{Headers, decode_body, header};
use crate::error::Result;
use crate::executor::Executor;
use crate::failure::HandlerError;
use crate::name::EndpointName;
use crate::pipeline::{Lazy, Param, Pipeline, param_refs};
use crate::send::{Delivery, Origin, Outgoing};
use crate::subscriptions::Publication;

/// Handles messages of type `M`.
///
/// ```
/// use message::{Message, MessageKind};
/// use serde::{Deserialize, Serialize};
/// use transport_pg::{Context, Handler, HandlerError};
///
/// #[derive(Serialize, Deserialize)]
/// struct Deposit { account: String, cents: i64 }
///
/// impl Message for Deposit {
///     const NAME: &'static str = "bank.Deposit";
///     const KIND: MessageKind = MessageKind::Command;
/// }
///
/// struct Ledger;
///
/// impl Handler<Deposit> for Ledger {
///     async fn handle(&self, m: Deposit, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
///         // Rolled back with the receive if anything below fails.
///         ctx.tx()
///             .execute(
///                 "UPDATE bank.accounts SET cents = cents + $2 WHERE id = $1",
///                 &[&m.account, &m.cents],
///             )
///             .await?;
///         Ok(())
///     }
/// }
/// ```
pub trait Handler<M: Message>: Send + Sync + 'static {
    /// Handles one message inside the receive transaction. An error (or a panic) rolls
    /// back everything the handler did and counts a failed attempt.
    fn handle(
        &self,
        message: M,
        ctx: &mut Context<'_>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// The key of the rows this message will lock, if any (a saga's correlation value).
    /// The host orders each batch by it, so that batches take their locks in one order
    /// and cannot deadlock each other.
    fn lock_key(&self, message: &M) -> Option<String> {
        let _ = message;
        None
    }
}

/// The receive transaction as a handler sees it: statements only, no transaction
/// control, because the host owns BEGIN, the savepoints and COMMIT. Settings a handler
/// changes must be `SET LOCAL`, since the connection returns to a pool.
///
/// In a pipelined batch the handler's savepoint is taken just before its first
/// statement, so a handler that never runs one costs the batch no savepoint.
pub struct Tx<'a> {
    client: &'a deadpool_postgres::Client,
    pipeline: Option<&'a dyn Lazy>,
}

impl<'a> Tx<'a> {
    /// A transaction whose handler savepoint, if any, is already taken.
    pub(crate) fn new(client: &'a deadpool_postgres::Client) -> Self {
        Tx {
            client,
            pipeline: None,
        }
    }

    /// A transaction of a pipelined batch, which takes the savepoint when first used.
    pub(crate) fn pipelined<'c: 'a>(pipeline: &'a Pipeline<'c>) -> Self {
        Tx {
            client: pipeline.client(),
            pipeline: Some(pipeline),
        }
    }

    /// The connection, for the host's own statements (not the handler's).
    pub(crate) fn client(&self) -> &'a deadpool_postgres::Client {
        self.client
    }

    fn before_statement(&self) {
        if let Some(pipeline) = self.pipeline {
            pipeline.before_statement();
        }
    }

    async fn prepare(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        self.before_statement();
        self.client.prepare_cached(sql).await
    }

    /// Runs a statement, returning the rows affected.
    pub async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepare(sql).await?;
        self.client.execute(&statement, params).await
    }

    /// Runs a query, returning every row.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.prepare(sql).await?;
        self.client.query(&statement, params).await
    }

    /// Runs a query that returns exactly one row.
    pub async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error> {
        let statement = self.prepare(sql).await?;
        self.client.query_one(&statement, params).await
    }

    /// Runs a query that returns at most one row.
    pub async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let statement = self.prepare(sql).await?;
        self.client.query_opt(&statement, params).await
    }
}

impl Tx<'_> {
    /// Whether this is a pipelined batch's transaction, where
    /// [`execute_unawaited`](Tx::execute_unawaited) does not wait.
    pub fn is_pipelined(&self) -> bool {
        self.pipeline.is_some()
    }

    /// Runs a statement whose answer the handler does not need to go on. In a pipelined
    /// batch it is sent now, and its answer read with the batch's others; an error fails
    /// the batch, which is then retaken one message at a time, every statement awaited.
    /// Outside a pipelined batch it runs at once. `op` names it in errors. A later
    /// statement of the transaction sees its effect either way: requests run in the order
    /// sent.
    ///
    /// The batch's COMMIT goes out before this answer is read, and only an error stops
    /// it (a transaction an error aborted does not commit). So what the caller would
    /// check in the answer, such as that one row changed, the statement must check on
    /// the server, raising an error when it does not hold. For the same reason a handler
    /// must not roll back to a savepoint of its own after such a statement: that would
    /// let the transaction recover on the server and commit, while the batch reports the
    /// error it swallowed.
    pub async fn execute_unawaited(
        &self,
        sql: &str,
        params: Vec<Param>,
        op: &'static str,
    ) -> Result<(), tokio_postgres::Error> {
        let statement = self.prepare(sql).await?;
        match self.pipeline {
            Some(pipeline) => pipeline.unawaited(statement, params, op),
            None => {
                self.client
                    .execute(&statement, &param_refs(&params))
                    .await?;
            }
        }
        Ok(())
    }
}

impl Executor for Tx<'_> {
    async fn prepare_statement(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        self.prepare(sql).await
    }

    fn execute_statement(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send {
        // Synchronous, so the savepoint is on the connection before this request.
        self.before_statement();
        self.client.execute(statement, params)
    }

    fn query_statement(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send {
        self.before_statement();
        self.client.query(statement, params)
    }
}

/// What a handler runs with: the incoming message's headers, the open transaction and
/// the sends it makes.
pub struct Context<'a> {
    tx: Tx<'a>,
    headers: &'a Headers,
    message_id: Uuid,
    origin: &'a Origin,
    pub(crate) outgoing: Vec<Outgoing>,
    pub(crate) publications: Vec<Publication>,
}

impl<'a> Context<'a> {
    pub(crate) fn new(
        tx: Tx<'a>,
        headers: &'a Headers,
        message_id: Uuid,
        origin: &'a Origin,
    ) -> Self {
        Context {
            tx,
            headers,
            message_id,
            origin,
            outgoing: Vec::new(),
            publications: Vec::new(),
        }
    }

    /// The receive transaction, for business reads and writes.
    pub fn tx(&self) -> &Tx<'a> {
        &self.tx
    }

    /// The incoming message's headers.
    pub fn headers(&self) -> &Headers {
        self.headers
    }

    /// The incoming message's id.
    pub fn message_id(&self) -> Uuid {
        self.message_id
    }

    /// How many times this message has failed before this attempt.
    pub fn failed_attempts(&self) -> u32 {
        self.headers.counter(header::FAILED_ATTEMPTS)
    }

    /// The name of the endpoint this handler runs in.
    pub fn endpoint(&self) -> &str {
        &self.origin.name
    }

    /// Publishes event `message`: one copy to every endpoint subscribed to its type,
    /// written when the handler returns and visible at commit.
    pub fn publish<M: Message>(&mut self, message: &M) -> Result<Uuid> {
        let mut template = self.origin.envelope_for(
            message,
            self.origin_self()?,
            "publish",
            Some(self.headers),
        )?;
        template.delivery = Delivery::Now;
        let id = template.message_id;
        self.publications.push(Publication {
            message_type: M::NAME.to_owned(),
            template,
        });
        Ok(id)
    }

    /// Replies to the incoming message's sender (its `reply_to` header). A reply to a
    /// message a saga sent carries that saga's id and type back.
    pub fn reply<M: Message>(&mut self, message: &M) -> Result<Uuid> {
        let Some(reply_to) = self.headers.get(header::REPLY_TO).map(str::to_owned) else {
            return Err(crate::Error::Config(format!(
                "cannot reply to message {}: it has no {} header",
                self.message_id,
                header::REPLY_TO
            )));
        };
        let mut outgoing =
            self.origin
                .envelope(message, Some(&reply_to), "reply", Some(self.headers))?;
        for name in [header::SAGA_ID, header::SAGA_TYPE, header::CORRELATION_ID] {
            if let Some(value) = self.headers.get(name) {
                outgoing.headers.insert(name, value);
            }
        }
        let id = outgoing.message_id;
        self.outgoing.push(outgoing);
        Ok(id)
    }

    /// Sends `message` to `endpoint` (or its route) with extra headers, such as a saga's
    /// id on a request whose reply must find the saga again.
    pub fn send_with_headers<M: Message>(
        &mut self,
        endpoint: Option<&str>,
        message: &M,
        headers: &[(&str, &str)],
    ) -> Result<Uuid> {
        let mut outgoing = self
            .origin
            .envelope(message, endpoint, "send", Some(self.headers))?;
        for (name, value) in headers {
            outgoing.headers.insert(*name, *value);
        }
        let id = outgoing.message_id;
        self.outgoing.push(outgoing);
        Ok(id)
    }

    /// Requests a timeout for a saga: `message` comes back to this endpoint after
    /// `delay`, with intent `timeout` and the saga's id and type in its headers. It waits
    /// in this endpoint's delayed table, tagged with the saga id, so
    /// [`cancel_timeouts`](Context::cancel_timeouts) can remove it.
    pub fn request_timeout<M: Message>(
        &mut self,
        delay: Duration,
        message: &M,
        saga_id: Uuid,
        saga_type: &str,
    ) -> Result<Uuid> {
        let mut outgoing = self.origin.envelope_for(
            message,
            self.origin_self()?,
            "timeout",
            Some(self.headers),
        )?;
        outgoing
            .headers
            .insert(header::SAGA_ID, saga_id.to_string());
        outgoing.headers.insert(header::SAGA_TYPE, saga_type);
        outgoing.delivery = Delivery::After(delay);
        outgoing.saga_id = Some(saga_id);
        let id = outgoing.message_id;
        self.outgoing.push(outgoing);
        Ok(id)
    }

    /// Deletes every pending timeout of `saga_id` from this endpoint's delayed table,
    /// inside the receive transaction; returns how many were deleted. Timeouts requested
    /// by this same handler call are not yet written and are not affected.
    pub async fn cancel_timeouts(&self, saga_id: Uuid) -> Result<u64> {
        self.tx
            .execute(&self.cancel_timeouts_sql()?, &[&saga_id])
            .await
            .map_err(crate::error::Error::db("cancel saga timeouts"))
    }

    /// [`cancel_timeouts`](Context::cancel_timeouts) for a caller that does not need the
    /// count: in a pipelined batch, without waiting for the answer (see
    /// [`Tx::execute_unawaited`]).
    pub async fn cancel_timeouts_unawaited(&self, saga_id: Uuid) -> Result<()> {
        self.tx
            .execute_unawaited(
                &self.cancel_timeouts_sql()?,
                vec![Box::new(saga_id)],
                "cancel saga timeouts",
            )
            .await
            .map_err(crate::error::Error::db("cancel saga timeouts"))
    }

    /// The statement deleting a saga's timeouts from this endpoint's delayed table.
    fn cancel_timeouts_sql(&self) -> Result<String> {
        let delayed = self.origin_self()?.tables().delayed;
        Ok(crate::sql::delayed::delete_for_saga(&delayed))
    }

    /// This endpoint's own name. Every context is made by an endpoint's pump, which has a
    /// queue; the error only guards against a sender-side origin slipping in.
    fn origin_self(&self) -> Result<EndpointName> {
        self.origin.reply_to.clone().ok_or_else(|| {
            crate::Error::Config("this context has no endpoint of its own to address".into())
        })
    }

    /// Sends command `message` to the endpoint its route names. The row is written after
    /// the handler returns (a failed handler's sends are never written) and becomes
    /// visible at commit.
    pub fn send<M: Message>(&mut self, message: &M) -> Result<Uuid> {
        self.push(message, None, "send")
    }

    /// Sends `message` to `endpoint`, whatever the routing table says.
    pub fn send_to<M: Message>(&mut self, endpoint: &str, message: &M) -> Result<Uuid> {
        self.push(message, Some(endpoint), "send")
    }

    /// Sends `message` to `endpoint` (or, when `None`, its route), to be delivered after
    /// `delay` by the database's clock. It waits in the destination's delayed table.
    pub fn defer<M: Message>(
        &mut self,
        endpoint: Option<&str>,
        delay: Duration,
        message: &M,
    ) -> Result<Uuid> {
        self.push_with(message, endpoint, "send", Delivery::After(delay))
    }

    /// Sends `message` to `endpoint` (or its route), to be delivered at `at`.
    pub fn defer_until<M: Message>(
        &mut self,
        endpoint: Option<&str>,
        at: SystemTime,
        message: &M,
    ) -> Result<Uuid> {
        self.push_with(message, endpoint, "send", Delivery::At(at))
    }

    fn push<M: Message>(&mut self, message: &M, to: Option<&str>, intent: &str) -> Result<Uuid> {
        self.push_with(message, to, intent, Delivery::Now)
    }

    fn push_with<M: Message>(
        &mut self,
        message: &M,
        to: Option<&str>,
        intent: &str,
        delivery: Delivery,
    ) -> Result<Uuid> {
        let mut outgoing = self
            .origin
            .envelope(message, to, intent, Some(self.headers))?;
        outgoing.delivery = delivery;
        let id = outgoing.message_id;
        self.outgoing.push(outgoing);
        Ok(id)
    }
}

/// A decoded message waiting for its handler, with its lock key.
pub(crate) struct Prepared {
    pub value: Box<dyn Any + Send>,
    pub lock_key: Option<String>,
}

/// A handler with its message type erased, so the host can keep one table of them.
pub(crate) trait ErasedHandler: Send + Sync {
    /// Command or event; endpoints subscribe to the events they handle.
    fn message_kind(&self) -> message::MessageKind;

    /// Decodes the body; the error is the reason recorded in the error queue.
    fn prepare(&self, content_type: Option<&str>, body: &[u8]) -> Result<Prepared, String>;

    /// Runs the handler on a value [`prepare`](ErasedHandler::prepare) made.
    fn call<'a>(
        &'a self,
        value: Box<dyn Any + Send>,
        ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

pub(crate) struct TypedHandler<M, H> {
    handler: H,
    _message: PhantomData<fn() -> M>,
}

impl<M, H> TypedHandler<M, H> {
    pub(crate) fn new(handler: H) -> Self {
        TypedHandler {
            handler,
            _message: PhantomData,
        }
    }
}

impl<M: Message, H: Handler<M>> ErasedHandler for TypedHandler<M, H> {
    fn message_kind(&self) -> message::MessageKind {
        M::KIND
    }

    fn prepare(&self, content_type: Option<&str>, body: &[u8]) -> Result<Prepared, String> {
        let message: M = decode_body(content_type, body)?;
        let lock_key = self.handler.lock_key(&message);
        Ok(Prepared {
            value: Box::new(message),
            lock_key,
        })
    }

    fn call<'a>(
        &'a self,
        value: Box<dyn Any + Send>,
        ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        match value.downcast::<M>() {
            Ok(message) => Box::pin(self.handler.handle(*message, ctx)),
            Err(_) => Box::pin(async {
                Err(HandlerError::msg("internal: prepared value of the wrong type").permanent())
            }),
        }
    }
}
