//! The events that move an order on, so that `sales.orders` alone answers "where is my
//! order": OrderBilled, PaymentFailed and OrderShipped change its status (forward only,
//! see [`OrderStatus::can_become`]); OrderShipped and PaymentRefunded tell the customer.
//!
//! Each event may arrive late, early or twice. A status that does not move changes
//! nothing, and a notice is recorded only with the move it announces (or, for a refund,
//! once per order), so a duplicate event never notifies twice.

use messages::{OrderBilled, OrderShipped, PaymentFailed, PaymentRefunded};
use tracing::debug;
use transport_pg::tokio_postgres::types::ToSql;
use transport_pg::{Context, Handler, HandlerError, Tx};

use crate::error::{Error, Result};
use crate::orders::{lock_status, notify};
use crate::status::OrderStatus;
use crate::{Sales, sql};

/// A notice to the customer, recorded only with the status move it announces.
#[derive(Clone, Copy)]
struct Notice<'a> {
    /// `sales.notifications.kind`.
    kind: &'a str,
    /// The message to the customer.
    text: &'a str,
}

impl Handler<OrderBilled> for Sales {
    async fn handle(&self, billed: OrderBilled, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        self.advance(ctx.tx(), &billed.order_id, OrderStatus::Billed, None)
            .await
            .map(drop)
            .map_err(Error::into_handler_error)
    }

    fn lock_key(&self, billed: &OrderBilled) -> Option<String> {
        Some(billed.order_id.clone())
    }
}

impl Handler<PaymentFailed> for Sales {
    async fn handle(
        &self,
        failed: PaymentFailed,
        ctx: &mut Context<'_>,
    ) -> Result<(), HandlerError> {
        self.advance(ctx.tx(), &failed.order_id, OrderStatus::PaymentFailed, None)
            .await
            .map(drop)
            .map_err(Error::into_handler_error)
    }

    fn lock_key(&self, failed: &PaymentFailed) -> Option<String> {
        Some(failed.order_id.clone())
    }
}

impl Handler<OrderShipped> for Sales {
    async fn handle(
        &self,
        shipped: OrderShipped,
        ctx: &mut Context<'_>,
    ) -> Result<(), HandlerError> {
        self.shipped(&shipped, ctx.tx())
            .await
            .map_err(Error::into_handler_error)
    }

    fn lock_key(&self, shipped: &OrderShipped) -> Option<String> {
        Some(shipped.order_id.clone())
    }
}

impl Handler<PaymentRefunded> for Sales {
    async fn handle(
        &self,
        refunded: PaymentRefunded,
        ctx: &mut Context<'_>,
    ) -> Result<(), HandlerError> {
        self.refunded(&refunded, ctx.tx())
            .await
            .map_err(Error::into_handler_error)
    }

    fn lock_key(&self, refunded: &PaymentRefunded) -> Option<String> {
        Some(refunded.order_id.clone())
    }
}

impl Sales {
    /// Moves the order to `next` when its status allows, recording `notice` with the move;
    /// returns whether it moved. The rule is checked in the update, and the notice is
    /// inserted by the same statement, so the usual case costs one; only an order that
    /// did not move is read, to tell a late event from an order Sales never stored.
    async fn advance(
        &self,
        tx: &Tx<'_>,
        order_id: &str,
        next: OrderStatus,
        notice: Option<Notice<'_>>,
    ) -> Result<bool> {
        let from = OrderStatus::names_that_can_become(next);
        let to = next.as_str();
        let moved = match &notice {
            None => {
                tx.execute(sql::ORDER_ADVANCE, &[&order_id, &to, &from])
                    .await
            }
            Some(notice) => {
                let params: [&(dyn ToSql + Sync); 5] =
                    [&order_id, &to, &from, &notice.kind, &notice.text];
                tx.execute(sql::ORDER_ADVANCE_NOTIFY, &params).await
            }
        }
        .map_err(Error::db("set the order's status", order_id))?;
        if moved == 1 {
            debug!(instance = %self.instance, order_id, to = %next,
                notice = notice.map(|n| n.kind), "order status moved");
            return Ok(true);
        }

        let status = lock_status(tx, order_id).await?;
        debug!(instance = %self.instance, order_id, status = %status, event_status = %next,
            "status not moved: the order is already there or further on");
        Ok(false)
    }

    async fn shipped(&self, shipped: &OrderShipped, tx: &Tx<'_>) -> Result<()> {
        let id = &shipped.order_id;
        let text = format!(
            "Your order {id} is on its way; tracking number {}.",
            shipped.tracking_number
        );
        let notice = Notice {
            kind: "shipped",
            text: &text,
        };
        self.advance(tx, id, OrderStatus::Shipped, Some(notice))
            .await?;
        Ok(())
    }

    /// Tells the customer their money is back, once per order: the order row's lock
    /// orders concurrent duplicates, and the second finds the first's notice.
    async fn refunded(&self, refunded: &PaymentRefunded, tx: &Tx<'_>) -> Result<()> {
        let id = &refunded.order_id;
        lock_status(tx, id).await?;
        let told: bool = tx
            .query_one(sql::NOTIFICATION_EXISTS, &[id, &"refunded"])
            .await
            .map_err(Error::db("look up notifications", id))?
            .get(0);
        if told {
            debug!(instance = %self.instance, order_id = %id,
                "refund already notified; nothing to do");
            return Ok(());
        }
        let notice = format!(
            "The payment for order {id} was refunded ({} cents).",
            refunded.amount_cents
        );
        notify(tx, id, "refunded", &notice).await?;
        debug!(instance = %self.instance, order_id = %id, refund_id = %refunded.refund_id,
            "refund notified");
        Ok(())
    }
}
