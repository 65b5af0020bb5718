//! The fulfilment saga, `shipping.Fulfilment`: one instance per order, correlated by the
//! order id, started by whichever of OrderPlaced, OrderBilled and PaymentFailed arrives
//! first. What it decides is in [`progress`](crate::progress); this module plugs that
//! into persistence-pg and turns each [`Action`] into a send or a completion.
//!
//! On start it requests the payment timeout ([`PaymentTimeout`]), which comes back to
//! this endpoint after the configured delay. It completes on OrderShipped, on
//! PaymentRefunded, and on PaymentFailed; completing closes the instance and deletes its
//! pending timeout in the same transaction, and the closed record makes any late or
//! duplicated message for the order a logged no-op rather than a second saga.

use std::sync::Arc;
use std::time::Duration;

use messages::{
    OrderBilled, OrderPlaced, OrderShipped, PaymentFailed, PaymentRefunded, PaymentTimeout,
};
use persistence_pg::{Saga, SagaContext, SagaHandles, SagaMessages, SagaTimeout};
use tracing::debug;
use transport_pg::HandlerError;

use crate::progress::{Action, Progress};

/// The saga type's name in `bus.sagas.saga_type`.
pub const SAGA_NAME: &str = "shipping.Fulfilment";

/// The fulfilment saga of one Shipping process.
pub struct Fulfilment {
    /// This process's instance name, on the saga's log lines.
    pub(crate) instance: Arc<str>,
    /// How long after the saga starts an unpaid order is cancelled.
    pub(crate) payment_timeout: Duration,
}

impl Saga for Fulfilment {
    const NAME: &'static str = SAGA_NAME;
    type Data = Progress;

    fn messages(m: &mut SagaMessages<Self>) {
        m.handles::<OrderPlaced>()
            .handles::<OrderBilled>()
            .handles::<PaymentFailed>()
            .handles::<OrderShipped>()
            .handles::<PaymentRefunded>()
            .timeout::<PaymentTimeout>();
    }
}

type Ctx<'a, 'm> = SagaContext<'a, 'm, Fulfilment>;

impl Fulfilment {
    /// Requests the payment timeout when this message started the saga, then takes
    /// `actions`.
    fn apply(
        &self,
        progress: &Progress,
        event: &'static str,
        actions: Vec<Action>,
        ctx: &mut Ctx<'_, '_>,
    ) -> Result<(), HandlerError> {
        let order_id = ctx.correlation().to_owned();
        if ctx.is_new() {
            let timeout = PaymentTimeout {
                order_id: order_id.clone(),
            };
            ctx.request_timeout(self.payment_timeout, timeout)?;
        }
        for action in &actions {
            match action {
                Action::Ship(ship) => {
                    ctx.send(ship)?;
                }
                Action::Cancel(cancel) => {
                    ctx.send(cancel)?;
                }
                Action::Refund(refund) => {
                    ctx.send(refund)?;
                }
                Action::Complete => ctx.mark_complete(),
            }
        }
        debug!(instance = %self.instance, saga_id = %ctx.saga_id(), order_id = %order_id,
            event, started = ctx.is_new(), stage = progress.stage(), actions = ?actions,
            completed = ctx.is_complete(), "fulfilment step");
        Ok(())
    }
}

impl SagaHandles<OrderPlaced> for Fulfilment {
    const STARTS: bool = true;

    fn correlate(placed: &OrderPlaced) -> String {
        placed.order_id.clone()
    }

    async fn handle(
        &self,
        progress: &mut Progress,
        placed: OrderPlaced,
        ctx: &mut Ctx<'_, '_>,
    ) -> Result<(), HandlerError> {
        let actions = progress.placed(&placed.order_id, &placed);
        self.apply(progress, "order placed", actions, ctx)
    }
}

impl SagaHandles<OrderBilled> for Fulfilment {
    const STARTS: bool = true;

    fn correlate(billed: &OrderBilled) -> String {
        billed.order_id.clone()
    }

    async fn handle(
        &self,
        progress: &mut Progress,
        billed: OrderBilled,
        ctx: &mut Ctx<'_, '_>,
    ) -> Result<(), HandlerError> {
        let actions = progress.billed(&billed.order_id, &billed);
        self.apply(progress, "order billed", actions, ctx)
    }
}

impl SagaHandles<PaymentFailed> for Fulfilment {
    const STARTS: bool = true;

    fn correlate(failed: &PaymentFailed) -> String {
        failed.order_id.clone()
    }

    async fn handle(
        &self,
        progress: &mut Progress,
        failed: PaymentFailed,
        ctx: &mut Ctx<'_, '_>,
    ) -> Result<(), HandlerError> {
        let actions = progress.declined(&failed.order_id, &failed.reason);
        self.apply(progress, "payment failed", actions, ctx)
    }
}

impl SagaHandles<OrderShipped> for Fulfilment {
    fn correlate(shipped: &OrderShipped) -> String {
        shipped.order_id.clone()
    }

    async fn handle(
        &self,
        progress: &mut Progress,
        _shipped: OrderShipped,
        ctx: &mut Ctx<'_, '_>,
    ) -> Result<(), HandlerError> {
        let actions = progress.finished();
        self.apply(progress, "order shipped", actions, ctx)
    }
}

impl SagaHandles<PaymentRefunded> for Fulfilment {
    fn correlate(refunded: &PaymentRefunded) -> String {
        refunded.order_id.clone()
    }

    async fn handle(
        &self,
        progress: &mut Progress,
        _refunded: PaymentRefunded,
        ctx: &mut Ctx<'_, '_>,
    ) -> Result<(), HandlerError> {
        let actions = progress.finished();
        self.apply(progress, "payment refunded", actions, ctx)
    }
}

impl SagaTimeout<PaymentTimeout> for Fulfilment {
    fn correlate(timeout: &PaymentTimeout) -> String {
        timeout.order_id.clone()
    }

    async fn timeout(
        &self,
        progress: &mut Progress,
        timeout: PaymentTimeout,
        ctx: &mut Ctx<'_, '_>,
    ) -> Result<(), HandlerError> {
        let actions = progress.timeout(&timeout.order_id);
        self.apply(progress, "payment timeout", actions, ctx)
    }
}
