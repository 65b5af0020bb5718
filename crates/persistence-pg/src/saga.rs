//! The traits a saga implements: [`Saga`] for its name, data and message list,
//! [`SagaHandles`] once per message it handles, [`SagaTimeout`] once per timeout.
//!
//! The runtime that runs them inside the receive transaction lives in `runtime`; the list
//! of messages is collected by [`SagaMessages`](crate::SagaMessages).

use std::future::Future;

use message::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use transport_pg::HandlerError;

use crate::context::SagaContext;
use crate::registration::SagaMessages;

/// A saga type: a long-running state machine with one instance per business id.
///
/// The trait names the saga, its data, and the messages it reacts to; what it does with
/// each message is in one [`SagaHandles`] or [`SagaTimeout`] impl per message type. See the
/// crate docs for a whole saga.
pub trait Saga: Sized + Send + Sync + 'static {
    /// The saga type's stable name, `<contract>.<Type>` like a message type, e.g.
    /// `shipping.Fulfilment`. Stored with every instance, so never change it.
    const NAME: &'static str;

    /// The state each instance keeps between messages, stored as jsonb. A new instance
    /// starts from `Default`. As with messages, a field added later needs
    /// `#[serde(default)]` (or must be an `Option`) for stored instances to keep decoding.
    type Data: Serialize + DeserializeOwned + Default + Send + Sync + 'static;

    /// What happens to a message for an instance that does not exist or is closed
    /// (default [`NotFound::LogAndConsume`]).
    const NOT_FOUND: NotFound = NotFound::LogAndConsume;

    /// Lists the messages this saga handles and its timeouts; each needs the matching
    /// [`SagaHandles`] or [`SagaTimeout`] impl.
    ///
    /// ```text
    /// fn messages(m: &mut SagaMessages<Self>) {
    ///     m.handles::<OrderPlaced>().handles::<OrderBilled>().timeout::<PaymentDue>();
    /// }
    /// ```
    fn messages(messages: &mut SagaMessages<Self>);
}

/// How the saga reacts to message `M`.
pub trait SagaHandles<M: Message>: Saga {
    /// Whether `M` may start a new instance when none exists for its correlation value
    /// (default `false`). Several message types may start one saga; whichever arrives
    /// first creates it and the others find it.
    const STARTS: bool = false;

    /// The correlation value `message` belongs to: the one business id shared by every
    /// message of an instance, such as the order id. The host also orders each batch by
    /// it, so batches lock saga rows in one order and cannot deadlock.
    fn correlate(message: &M) -> String;

    /// Handles `message` with the instance's data, inside the receive transaction.
    /// Changes to `data` are saved when it returns `Ok`; an error rolls back the data,
    /// every business write and every send together, and counts a failed attempt.
    fn handle(
        &self,
        data: &mut Self::Data,
        message: M,
        ctx: &mut SagaContext<'_, '_, Self>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// How the saga reacts to timeout `T`, a message it requested for itself with
/// [`SagaContext::request_timeout`].
///
/// A timeout comes back to the instance that requested it, found by the saga id it
/// carries; one whose instance is closed or gone is consumed and logged.
pub trait SagaTimeout<T: Message>: Saga {
    /// The correlation value the timeout carries. It does not route the timeout (the saga
    /// id does); it keeps lock ordering in a batch the same as for every other message.
    fn correlate(timeout: &T) -> String;

    /// Handles the timeout with the instance's data, inside the receive transaction; as
    /// [`SagaHandles::handle`].
    fn timeout(
        &self,
        data: &mut Self::Data,
        timeout: T,
        ctx: &mut SagaContext<'_, '_, Self>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// The rule for a message whose saga instance does not exist (and the message may not
/// start one) or is already closed. Either way the message is never retried: retrying
/// cannot make a closed saga open again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotFound {
    /// Log it (at info, with the saga type and correlation value) and consume it.
    LogAndConsume,
    /// Move it to the error queue at once, with the reason, for an operator to look at.
    /// Timeouts are the exception: one whose saga is gone is always consumed.
    ErrorQueue,
}
