//! OrderPlaced: charge the order once, and publish the outcome (OrderBilled or
//! PaymentFailed) as often as the order is placed.
//!
//! The charge is made with the idempotency key `charge-<order id>` while the receive
//! transaction is open, and recorded in `billing.payments` in that transaction. A crash
//! after the provider answered and before the commit rolls the record back, and the
//! retry asks the provider again with the same key: it answers what it answered before,
//! and nothing is charged twice. A repeated OrderPlaced finds the record and only
//! republishes the outcome.

use gateways::api::{self, ChargeRequest};
use gateways::client::Outcome;
use message::Message;
use messages::{OrderBilled, OrderPlaced, PaymentFailed};
use tracing::debug;
use transport_pg::{Context, Handler, HandlerError};

use crate::error::{Error, Result};
use crate::payment::{Charge, Payment};
use crate::{Billing, sql};

impl Handler<OrderPlaced> for Billing {
    async fn handle(&self, placed: OrderPlaced, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        self.charge(placed, ctx)
            .await
            .map_err(Error::into_handler_error)
    }

    fn lock_key(&self, placed: &OrderPlaced) -> Option<String> {
        Some(placed.order_id.clone())
    }
}

impl Billing {
    async fn charge(&self, placed: OrderPlaced, ctx: &mut Context<'_>) -> Result<()> {
        let id = placed.order_id.as_str();
        if let Some(payment) = Payment::load(ctx.tx(), id, false).await? {
            debug!(instance = %self.instance, order_id = id, state = payment.state(),
                "order placed again; charging nothing, republishing the outcome");
            return publish_outcome(ctx, id, &payment);
        }

        let key = api::charge_key(id);
        let request = ChargeRequest {
            order_id: placed.order_id.clone(),
            amount_cents: placed.amount_cents,
            currency: placed.currency.clone(),
            card_token: placed.card_token.clone(),
        };
        debug!(instance = %self.instance, order_id = id, key = %key,
            amount_cents = placed.amount_cents, attempt = ctx.failed_attempts() + 1, "charging");
        let outcome = self
            .gateway
            .charge(&key, &request)
            .await
            .map_err(|source| Error::NoAnswer {
                operation: "charge",
                order_id: id.to_owned(),
                source,
            })?;

        let payment = match outcome {
            Outcome::Succeeded(reply) => {
                let charge = Charge {
                    charge_id: reply.charge_id.ok_or_else(|| Error::BadReply {
                        operation: "charge",
                        order_id: id.to_owned(),
                        field: "charge_id",
                    })?,
                    amount_cents: reply.amount_cents.unwrap_or(placed.amount_cents),
                    currency: placed.currency.clone(),
                };
                let inserted = ctx
                    .tx()
                    .execute(
                        sql::PAYMENT_INSERT_CHARGED,
                        &[
                            &id,
                            &key,
                            &charge.charge_id,
                            &charge.amount_cents,
                            &charge.currency,
                        ],
                    )
                    .await
                    .map_err(Error::db("record the charge", id))?;
                stored_unless_new(ctx, id, inserted, Payment::Charged(charge)).await?
            }
            Outcome::Declined(reply) => {
                let reason = reply.reason.unwrap_or_else(|| "declined".to_owned());
                let inserted = ctx
                    .tx()
                    .execute(
                        sql::PAYMENT_INSERT_DECLINED,
                        &[&id, &key, &placed.amount_cents, &placed.currency, &reason],
                    )
                    .await
                    .map_err(Error::db("record the decline", id))?;
                stored_unless_new(ctx, id, inserted, Payment::Declined { reason }).await?
            }
            Outcome::Pending(_) => {
                return Err(Error::Pending {
                    operation: "charge",
                    order_id: id.to_owned(),
                });
            }
            Outcome::Rejected { status, reply } => {
                return Err(Error::Rejected {
                    operation: "charge",
                    order_id: id.to_owned(),
                    status,
                    reason: reply.reason.unwrap_or_default(),
                });
            }
        };
        debug!(instance = %self.instance, order_id = id, state = payment.state(), "charged");
        publish_outcome(ctx, id, &payment)
    }
}

/// `fresh` when its insert took (`inserted` is 1), else what a concurrent handler of a
/// duplicate stored first: the provider answered both alike, but the stored one is what
/// every later repeat republishes.
async fn stored_unless_new(
    ctx: &Context<'_>,
    order_id: &str,
    inserted: u64,
    fresh: Payment,
) -> Result<Payment> {
    if inserted == 1 {
        return Ok(fresh);
    }
    Ok(Payment::load(ctx.tx(), order_id, false)
        .await?
        .unwrap_or(fresh))
}

/// Publishes what the charge came to: OrderBilled for a charge (refunded or not),
/// PaymentFailed for a decline.
fn publish_outcome(ctx: &mut Context<'_>, order_id: &str, payment: &Payment) -> Result<()> {
    match payment {
        Payment::Charged(charge) | Payment::Refunded { charge, .. } => publish(
            ctx,
            order_id,
            &OrderBilled {
                order_id: order_id.to_owned(),
                charge_id: charge.charge_id.clone(),
                amount_cents: charge.amount_cents,
                currency: charge.currency.clone(),
            },
        ),
        Payment::Declined { reason } => publish(
            ctx,
            order_id,
            &PaymentFailed {
                order_id: order_id.to_owned(),
                reason: reason.clone(),
            },
        ),
    }
}

/// Publishes `event` about `order_id`.
pub(crate) fn publish<M: Message>(ctx: &mut Context<'_>, order_id: &str, event: &M) -> Result<()> {
    ctx.publish(event).map_err(|source| Error::Publish {
        message_type: M::NAME,
        order_id: order_id.to_owned(),
        source,
    })?;
    Ok(())
}
