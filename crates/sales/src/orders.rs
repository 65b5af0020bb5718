//! The two commands Sales takes: PlaceOrder from the client (store the order, publish
//! OrderPlaced; a resubmission changes nothing) and CancelOrder from Shipping's saga
//! (cancel, tell the customer, publish OrderCancelled).

use message::Message;
use messages::{CancelOrder, OrderCancelled, OrderPlaced, PlaceOrder};
use tracing::{debug, warn};
use transport_pg::{Context, Handler, HandlerError, Tx};

use crate::error::{Error, Result};
use crate::status::OrderStatus;
use crate::{Sales, sql};

impl Handler<PlaceOrder> for Sales {
    async fn handle(&self, order: PlaceOrder, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        self.place(order, ctx)
            .await
            .map_err(Error::into_handler_error)
    }

    fn lock_key(&self, order: &PlaceOrder) -> Option<String> {
        Some(order.order_id.clone())
    }
}

impl Handler<CancelOrder> for Sales {
    async fn handle(&self, cancel: CancelOrder, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        self.cancel(cancel, ctx)
            .await
            .map_err(Error::into_handler_error)
    }

    fn lock_key(&self, cancel: &CancelOrder) -> Option<String> {
        Some(cancel.order_id.clone())
    }
}

impl Sales {
    /// Stores the order and publishes OrderPlaced, only when the order is new: the first
    /// PlaceOrder's OrderPlaced committed with its row, so a resubmission has nothing to
    /// add, and republishing would only make every subscriber handle a duplicate.
    async fn place(&self, order: PlaceOrder, ctx: &mut Context<'_>) -> Result<()> {
        let id = &order.order_id;
        let inserted = ctx
            .tx()
            .execute(
                sql::ORDER_INSERT,
                &[
                    &order.order_id,
                    &order.customer_id,
                    &order.amount_cents,
                    &order.currency,
                ],
            )
            .await
            .map_err(Error::db("store the order", id))?;
        if inserted == 0 {
            return self.resubmitted(&order, ctx.tx()).await;
        }

        publish(
            ctx,
            id,
            &OrderPlaced {
                order_id: order.order_id.clone(),
                customer_id: order.customer_id.clone(),
                amount_cents: order.amount_cents,
                currency: order.currency.clone(),
                card_token: order.card_token.clone(),
            },
        )?;
        debug!(instance = %self.instance, order_id = %id, amount_cents = order.amount_cents,
            "order placed");
        Ok(())
    }

    /// A PlaceOrder for an order already stored: nothing changes. One whose contents
    /// differ is a client bug worth a warning; the first version stands.
    async fn resubmitted(&self, order: &PlaceOrder, tx: &Tx<'_>) -> Result<()> {
        let id = &order.order_id;
        let row = tx
            .query_one(sql::ORDER_GET, &[id])
            .await
            .map_err(Error::db("read the stored order", id))?;
        let stored: (String, i64, String) = (row.get(0), row.get(1), row.get(2));
        let sent = (
            order.customer_id.clone(),
            order.amount_cents,
            order.currency.clone(),
        );
        if stored == sent {
            debug!(instance = %self.instance, order_id = %id,
                "order resubmitted; already stored, nothing to do");
        } else {
            warn!(instance = %self.instance, order_id = %id,
                stored_amount_cents = stored.1, sent_amount_cents = sent.1,
                "order resubmitted with different contents; the first one stands");
        }
        Ok(())
    }

    /// Cancels the order unless it already is (a duplicate) or has shipped (which the
    /// saga never lets happen; logged, and the order stays shipped).
    async fn cancel(&self, cancel: CancelOrder, ctx: &mut Context<'_>) -> Result<()> {
        let id = &cancel.order_id;
        let status = lock_status(ctx.tx(), id).await?;
        if !status.can_become(OrderStatus::Cancelled) {
            if status == OrderStatus::Cancelled {
                debug!(instance = %self.instance, order_id = %id,
                    "order already cancelled; nothing to do");
            } else {
                warn!(instance = %self.instance, order_id = %id, status = %status,
                    reason = %cancel.reason, "cannot cancel an order in this status; ignored");
            }
            return Ok(());
        }

        ctx.tx()
            .execute(sql::ORDER_CANCEL, &[id, &cancel.reason])
            .await
            .map_err(Error::db("cancel the order", id))?;
        let notice = format!("Your order {id} was cancelled: {}.", cancel.reason);
        notify(ctx.tx(), id, "cancelled", &notice).await?;
        publish(
            ctx,
            id,
            &OrderCancelled {
                order_id: cancel.order_id.clone(),
                reason: cancel.reason.clone(),
            },
        )?;
        debug!(instance = %self.instance, order_id = %id, from = %status,
            reason = %cancel.reason, "order cancelled");
        Ok(())
    }
}

/// The order's status, locked until commit; an order Sales never stored is an error.
pub(crate) async fn lock_status(tx: &Tx<'_>, order_id: &str) -> Result<OrderStatus> {
    let row = tx
        .query_opt(sql::ORDER_LOCK_STATUS, &[&order_id])
        .await
        .map_err(Error::db("lock the order", order_id))?
        .ok_or_else(|| Error::UnknownOrder {
            order_id: order_id.to_owned(),
        })?;
    let name: String = row.get(0);
    OrderStatus::parse(&name).ok_or(Error::UnknownStatus {
        order_id: order_id.to_owned(),
        status: name,
    })
}

/// Records a notice to the customer.
pub(crate) async fn notify(tx: &Tx<'_>, order_id: &str, kind: &str, text: &str) -> Result<()> {
    tx.execute(sql::NOTIFICATION_INSERT, &[&order_id, &kind, &text])
        .await
        .map_err(Error::db("record a notification", order_id))?;
    Ok(())
}

/// Publishes `event` about `order_id` from the handler's context.
pub(crate) fn publish<M: Message>(ctx: &mut Context<'_>, order_id: &str, event: &M) -> Result<()> {
    ctx.publish(event).map_err(|source| Error::Publish {
        message_type: M::NAME,
        order_id: order_id.to_owned(),
        source,
    })?;
    Ok(())
}
