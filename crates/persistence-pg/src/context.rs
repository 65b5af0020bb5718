//! [`SagaContext`]: what a saga handler runs with, on top of the transport's context.
//!
//! It knows the instance (id, correlation value, originator) and collects what the step
//! decides beyond its data: completion and timeout requests. Sends go straight to the
//! transport's context and are written with the step, inside the host's savepoint.

use std::marker::PhantomData;
use std::time::Duration;

use message::Message;
use transport_pg::{Context, Headers, Tx, header};
use uuid::Uuid;

use crate::error::SagaError;
use crate::saga::{Saga, SagaTimeout};
use crate::store::Instance;

/// Writes one requested timeout through the transport's context.
type WriteTimeout = Box<dyn FnOnce(&mut Context<'_>) -> transport_pg::Result<Uuid> + Send + Sync>;

/// A timeout requested by a step, written only if the step does not complete the saga.
pub(crate) struct PendingTimeout {
    pub message_type: &'static str,
    pub write: WriteTimeout,
}

/// What a saga handler runs with: the instance, the receive transaction for business
/// writes, and the ways to send, publish, reply, request a timeout or complete.
///
/// Everything done through it commits or rolls back with the step. Commands sent from a
/// saga carry its `saga_id` and `saga_type` headers, so a reply to them carries both back.
pub struct SagaContext<'a, 'm, S: Saga> {
    ctx: &'a mut Context<'m>,
    instance: &'a Instance,
    started: bool,
    completed: bool,
    timeouts: Vec<PendingTimeout>,
    declared_timeouts: &'a [&'static str],
    _saga: PhantomData<fn() -> S>,
}

impl<'a, 'm, S: Saga> SagaContext<'a, 'm, S> {
    pub(crate) fn new(
        ctx: &'a mut Context<'m>,
        instance: &'a Instance,
        started: bool,
        declared_timeouts: &'a [&'static str],
    ) -> Self {
        SagaContext {
            ctx,
            instance,
            started,
            completed: false,
            timeouts: Vec::new(),
            declared_timeouts,
            _saga: PhantomData,
        }
    }

    /// The instance's id, as in `bus.sagas.id` and the `saga_id` header.
    pub fn saga_id(&self) -> Uuid {
        self.instance.id
    }

    /// The instance's correlation value (its business id).
    pub fn correlation(&self) -> &str {
        &self.instance.correlation
    }

    /// Whether this message created the instance.
    pub fn is_new(&self) -> bool {
        self.started
    }

    /// The receive transaction, for business reads and writes that commit with the step.
    pub fn tx(&self) -> &Tx<'m> {
        self.ctx.tx()
    }

    /// The incoming message's headers.
    pub fn headers(&self) -> &Headers {
        self.ctx.headers()
    }

    /// The incoming message's id.
    pub fn message_id(&self) -> Uuid {
        self.ctx.message_id()
    }

    /// How many times the incoming message has failed before this attempt.
    pub fn failed_attempts(&self) -> u32 {
        self.ctx.failed_attempts()
    }

    /// Sends command `message` to its route, with the saga's headers.
    pub fn send<M: Message>(&mut self, message: &M) -> Result<Uuid, SagaError> {
        let headers = self.saga_headers();
        let sent = self
            .ctx
            .send_with_headers(None, message, &borrowed(&headers));
        self.outgoing("send", M::NAME, sent)
    }

    /// Sends `message` to `endpoint`, whatever the routing table says, with the saga's
    /// headers.
    pub fn send_to<M: Message>(&mut self, endpoint: &str, message: &M) -> Result<Uuid, SagaError> {
        let headers = self.saga_headers();
        let sent = self
            .ctx
            .send_with_headers(Some(endpoint), message, &borrowed(&headers));
        self.outgoing("send", M::NAME, sent)
    }

    /// Publishes event `message` to every subscriber of its type.
    pub fn publish<M: Message>(&mut self, message: &M) -> Result<Uuid, SagaError> {
        let published = self.ctx.publish(message);
        self.outgoing("publish", M::NAME, published)
    }

    /// Replies to the sender of the incoming message (its `reply_to`).
    pub fn reply<M: Message>(&mut self, message: &M) -> Result<Uuid, SagaError> {
        let replied = self.ctx.reply(message);
        self.outgoing("reply to", M::NAME, replied)
    }

    /// Replies to the endpoint whose message started the saga, however many messages
    /// later: its `reply_to` was stored at the start. The reply carries the starting
    /// message's correlation id (or its message id when it had none).
    pub fn reply_to_originator<M: Message>(&mut self, message: &M) -> Result<Uuid, SagaError> {
        let Some(originator) = self.instance.originator.as_deref() else {
            return Err(SagaError::NoOriginator {
                saga_type: S::NAME.to_owned(),
                saga_id: self.instance.id,
            });
        };
        let mut headers = self.saga_headers();
        headers.push((header::INTENT, "reply".to_owned()));
        if let Some(correlation_id) = &self.instance.originator_correlation_id {
            headers.push((header::CORRELATION_ID, correlation_id.clone()));
        }
        let sent = self
            .ctx
            .send_with_headers(Some(originator), message, &borrowed(&headers));
        self.outgoing("reply to", M::NAME, sent)
    }

    /// Requests timeout `timeout`: it comes back to this endpoint after `delay` (by the
    /// database's clock) and is handled by [`SagaTimeout::timeout`] with this instance's
    /// data. It waits in the endpoint's delayed table, tagged with the saga id, and is
    /// written when the step returns, unless the step completes the saga; completing
    /// deletes the instance's earlier timeouts too.
    pub fn request_timeout<T>(&mut self, delay: Duration, timeout: T) -> Result<(), SagaError>
    where
        T: Message,
        S: SagaTimeout<T>,
    {
        if !self.declared_timeouts.contains(&T::NAME) {
            return Err(SagaError::UndeclaredTimeout {
                saga_type: S::NAME.to_owned(),
                message_type: T::NAME.to_owned(),
            });
        }
        let saga_id = self.instance.id;
        self.timeouts.push(PendingTimeout {
            message_type: T::NAME,
            write: Box::new(move |ctx: &mut Context<'_>| {
                ctx.request_timeout(delay, &timeout, saga_id, S::NAME)
            }),
        });
        Ok(())
    }

    /// Marks the saga complete: when the step returns `Ok`, its row becomes a closed
    /// record and its pending timeouts are deleted, in the same transaction.
    pub fn mark_complete(&mut self) {
        self.completed = true;
    }

    /// Whether this step has marked the saga complete.
    pub fn is_complete(&self) -> bool {
        self.completed
    }

    /// The transport's context, for anything this one does not wrap (deferred sends,
    /// headers of your own).
    pub fn transport(&mut self) -> &mut Context<'m> {
        self.ctx
    }

    /// Ends the step: whether it completed the saga, and the timeouts it requested.
    pub(crate) fn finish(self) -> (bool, Vec<PendingTimeout>) {
        (self.completed, self.timeouts)
    }

    fn saga_headers(&self) -> Vec<(&'static str, String)> {
        vec![
            (header::SAGA_ID, self.instance.id.to_string()),
            (header::SAGA_TYPE, S::NAME.to_owned()),
        ]
    }

    fn outgoing(
        &self,
        action: &'static str,
        message_type: &str,
        result: transport_pg::Result<Uuid>,
    ) -> Result<Uuid, SagaError> {
        result.map_err(|source| SagaError::Outgoing {
            saga_type: S::NAME.to_owned(),
            saga_id: self.instance.id,
            action,
            message_type: message_type.to_owned(),
            source: Box::new(source),
        })
    }
}

fn borrowed<'h>(headers: &'h [(&'static str, String)]) -> Vec<(&'static str, &'h str)> {
    headers.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

// Saga handlers hold `&SagaContext` across awaits in futures that must be `Send`; this
// fails to compile if it stops being `Send + Sync` for every saga.
#[allow(dead_code, reason = "checked by the compiler, never called")]
const _: () = {
    fn send_and_sync<T: Send + Sync>() {}
    fn check<S: Saga>() {
        send_and_sync::<SagaContext<'static, 'static, S>>();
    }
};
