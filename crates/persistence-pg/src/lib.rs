//! Sagas on PostgreSQL: long-running, message-driven state machines whose state lives in
//! the same database as the queues, changed in the transaction that receives the message.
//!
//! A saga type names itself, its data and its messages ([`Saga`]); each message it handles
//! gets one [`SagaHandles`] impl saying how the message maps to the saga's correlation value
//! (one business id, such as the order id), whether it may start the saga, and what the
//! step does; each timeout gets one [`SagaTimeout`] impl. [`SagaEndpointExt::saga`] plugs
//! the saga into an endpoint as ordinary transport handlers, one per message type.
//!
//! ```
//! use std::time::Duration;
//!
//! use message::{Message, MessageKind};
//! use persistence_pg::{
//!     Saga, SagaContext, SagaEndpointExt, SagaHandles, SagaMessages, SagaTimeout,
//! };
//! use serde::{Deserialize, Serialize};
//! use transport_pg::{Database, EndpointBuilder, HandlerError};
//!
//! #[derive(Serialize, Deserialize)]
//! struct OrderPlaced { order_id: String }
//! #[derive(Serialize, Deserialize)]
//! struct OrderBilled { order_id: String }
//! #[derive(Serialize, Deserialize)]
//! struct ShipOrder { order_id: String }
//! #[derive(Serialize, Deserialize)]
//! struct CancelOrder { order_id: String }
//! #[derive(Serialize, Deserialize)]
//! struct PaymentDue { order_id: String }
//! # macro_rules! contract {
//! #     ($($ty:ident: $kind:ident),*) => {$(
//! #         impl Message for $ty {
//! #             const NAME: &'static str = concat!("retail.", stringify!($ty));
//! #             const KIND: MessageKind = MessageKind::$kind;
//! #         }
//! #     )*};
//! # }
//! # contract!(OrderPlaced: Event, OrderBilled: Event, ShipOrder: Command,
//! #     CancelOrder: Command, PaymentDue: Command);
//!
//! /// Ships an order once it is both placed and billed, in whichever order those
//! /// arrive; cancels it if it is still unpaid an hour after it was placed.
//! struct Fulfilment;
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Progress {
//!     placed: bool,
//!     billed: bool,
//! }
//!
//! impl Saga for Fulfilment {
//!     const NAME: &'static str = "shipping.Fulfilment";
//!     type Data = Progress;
//!
//!     fn messages(m: &mut SagaMessages<Self>) {
//!         m.handles::<OrderPlaced>()
//!             .handles::<OrderBilled>()
//!             .timeout::<PaymentDue>();
//!     }
//! }
//!
//! impl SagaHandles<OrderPlaced> for Fulfilment {
//!     const STARTS: bool = true;
//!
//!     fn correlate(placed: &OrderPlaced) -> String {
//!         placed.order_id.clone()
//!     }
//!
//!     async fn handle(
//!         &self,
//!         progress: &mut Progress,
//!         placed: OrderPlaced,
//!         ctx: &mut SagaContext<'_, '_, Self>,
//!     ) -> Result<(), HandlerError> {
//!         progress.placed = true;
//!         let due = PaymentDue { order_id: placed.order_id };
//!         ctx.request_timeout(Duration::from_secs(3600), due)?;
//!         ship_when_ready(progress, ctx)
//!     }
//! }
//!
//! impl SagaHandles<OrderBilled> for Fulfilment {
//!     const STARTS: bool = true;
//!
//!     fn correlate(billed: &OrderBilled) -> String {
//!         billed.order_id.clone()
//!     }
//!
//!     async fn handle(
//!         &self,
//!         progress: &mut Progress,
//!         _billed: OrderBilled,
//!         ctx: &mut SagaContext<'_, '_, Self>,
//!     ) -> Result<(), HandlerError> {
//!         progress.billed = true;
//!         ship_when_ready(progress, ctx)
//!     }
//! }
//!
//! impl SagaTimeout<PaymentDue> for Fulfilment {
//!     fn correlate(due: &PaymentDue) -> String {
//!         due.order_id.clone()
//!     }
//!
//!     async fn timeout(
//!         &self,
//!         progress: &mut Progress,
//!         due: PaymentDue,
//!         ctx: &mut SagaContext<'_, '_, Self>,
//!     ) -> Result<(), HandlerError> {
//!         if !progress.billed {
//!             ctx.send(&CancelOrder { order_id: due.order_id })?;
//!             ctx.mark_complete();
//!         }
//!         Ok(())
//!     }
//! }
//!
//! fn ship_when_ready(
//!     progress: &Progress,
//!     ctx: &mut SagaContext<'_, '_, Fulfilment>,
//! ) -> Result<(), HandlerError> {
//!     if progress.placed && progress.billed {
//!         ctx.send(&ShipOrder { order_id: ctx.correlation().to_owned() })?;
//!         // Closes the saga and deletes its pending PaymentDue in this transaction.
//!         ctx.mark_complete();
//!     }
//!     Ok(())
//! }
//!
//! async fn run_shipping(db: Database) -> Result<(), transport_pg::Error> {
//!     let endpoint = EndpointBuilder::new("shipping", db)
//!         .route::<ShipOrder>("shipping")
//!         .route::<CancelOrder>("sales")
//!         .saga(Fulfilment)
//!         .start()
//!         .await?;
//!     endpoint.run_until_signal(Duration::from_secs(10)).await?;
//!     Ok(())
//! }
//! ```
//!
//! # A step
//!
//! Inside the receive transaction, for a message of type `M`:
//!
//! 1. the saga row of `(Saga::NAME, correlate(msg))` in `bus.sagas` is locked with
//!    `SELECT ... FOR UPDATE`; when `M` may start the saga, one statement instead creates
//!    it (`INSERT ... ON CONFLICT DO NOTHING`) or locks the row that is there. Two start
//!    messages racing on two instances make exactly one saga: the second insert waits for
//!    the first transaction, and the statement run again locks its row, so neither fails
//!    and no retry is spent;
//! 2. the handler runs with the data (decoded from jsonb) and a [`SagaContext`], through
//!    which it writes business rows, sends, publishes, replies (to the sender, or to the
//!    saga's originator, whose `reply_to` was stored at the start), requests timeouts
//!    and marks the saga complete;
//! 3. the data is saved with its version raised; a completed saga instead becomes a
//!    closed record (`state = 'completed'`, `completed_at`) and its pending timeouts are
//!    deleted from the endpoint's delayed table, in the same transaction. In a pipelined
//!    batch these go out without the step waiting for their answers
//!    ([`transport_pg::Tx::execute_unawaited`]); the save raises an error on the server
//!    unless it changed its row, which fails the batch, and the retake, where every
//!    statement is awaited, reports the conflict.
//!
//! The host runs each handler in a savepoint, so a failing step rolls back the saga's
//! change together with the business writes and the sends, and the message is retried.
//! Each handler declares the saga's type and correlation value as its lock key, so the
//! host sorts every batch by it and batches lock saga rows in one order (no deadlocks).
//!
//! # Timeouts
//!
//! [`SagaContext::request_timeout`] defers a typed message back to the endpoint, tagged
//! with the saga's id (in the delayed table's `saga_id` column and the `saga_id` and
//! `saga_type` headers). It comes back to the very instance that asked for it, found by
//! that id, never to a later instance with the same correlation value. A timeout whose
//! saga is closed or gone is consumed and logged: one that was already due and on its
//! way when the saga completed arrives that way.
//!
//! # Closed records, retention and the purge
//!
//! A completed saga's row stays as a closed record for the saga's retention period
//! ([`SagaRegistration::retention`], default [`DEFAULT_RETENTION`]), so a late or
//! duplicated start message finds it closed and starts nothing. The purge is
//! opportunistic: after a step, at most once per [`SagaRegistration::purge_interval`]
//! (default [`DEFAULT_PURGE_INTERVAL`]) in each process, the handler deletes up to 200
//! expired closed records of its saga type in the same transaction, with SKIP LOCKED
//! and in a savepoint of its own, so it never waits and never fails the message. The
//! first step after start-up purges too. [`purge_closed`] does the same for a tool.
//!
//! # The not-found rule
//!
//! A message whose saga is closed, or was never started and may not start it, is never
//! retried: [`Saga::NOT_FOUND`] either logs and consumes it (the default) or sends it to
//! the error queue at once with the reason.
//!
//! # The table
//!
//! `bus.sagas` (migration `V4__sagas.sql` of the bus set) holds every saga type: `id`
//! (uuid), `saga_type`, `correlation` (unique together), `state` (`open`, `completed`),
//! `data` (jsonb), `version`, `started_by`, `originator`, `originator_correlation_id`,
//! `created_at`, `updated_at`, `completed_at`. Operators read it with SQL, or through
//! [`find_saga`], [`find_saga_by_id`] and [`list_open_sagas`].
//!
//! # Logs
//!
//! Each step's start, save and completion are debug events of target `pgbus::saga`, with
//! `saga_type`, `saga_id`, `correlation`, `message_type` and `version`. A message consumed
//! by the not-found rule, or a timeout of a closed saga, is logged at info; a failed purge
//! and a malformed timeout at warn.
//!
//! # Limits
//!
//! - An endpoint that handles no messages of a saga type purges none of its records; an
//!   idle endpoint keeps its closed records until its next step (or a [`purge_closed`]).
//! - A timeout type needs a correlation value ([`SagaTimeout::correlate`]), because the
//!   host's lock key sees only the message body, not the `saga_id` header.
//! - Commands sent from a saga carry its `saga_id` and `saga_type` headers; published
//!   events do not (the transport's publish takes no extra headers).
//! - Timeouts requested in the step that completes the saga are not written.

mod context;
mod error;
mod registration;
mod runtime;
mod saga;
pub mod sql;
mod store;

pub use context::SagaContext;
pub use error::SagaError;
pub use registration::{
    DEFAULT_PURGE_INTERVAL, DEFAULT_RETENTION, SagaEndpointExt, SagaMessages, SagaRegistration,
};
pub use saga::{NotFound, Saga, SagaHandles, SagaTimeout};
pub use store::{SagaRecord, SagaState, find_saga, find_saga_by_id, list_open_sagas, purge_closed};
