//! RefundPayment: give back a charge that landed after its order was cancelled, once,
//! and publish PaymentRefunded as often as the refund is asked for.
//!
//! The refund is made with the idempotency key `refund-<order id>` while the payment's
//! row is locked, and recorded in that row in the receive transaction; a crash before
//! the commit is retried with the same key, as for a charge.

use gateways::api::{self, RefundRequest};
use gateways::client::Outcome;
use messages::{PaymentRefunded, RefundPayment};
use tracing::{debug, warn};
use transport_pg::{Context, Handler, HandlerError};

use crate::charge::publish;
use crate::error::{Error, Result};
use crate::payment::{Charge, Payment};
use crate::{Billing, sql};

impl Handler<RefundPayment> for Billing {
    async fn handle(
        &self,
        refund: RefundPayment,
        ctx: &mut Context<'_>,
    ) -> Result<(), HandlerError> {
        self.refund(refund, ctx)
            .await
            .map_err(Error::into_handler_error)
    }

    fn lock_key(&self, refund: &RefundPayment) -> Option<String> {
        Some(refund.order_id.clone())
    }
}

impl Billing {
    async fn refund(&self, refund: RefundPayment, ctx: &mut Context<'_>) -> Result<()> {
        let id = refund.order_id.as_str();
        let nothing = |why: &str| Error::NothingToRefund {
            order_id: id.to_owned(),
            why: why.to_owned(),
        };
        let charge = match Payment::load(ctx.tx(), id, true).await? {
            None => return Err(nothing("Billing holds no payment for it")),
            Some(Payment::Declined { .. }) => return Err(nothing("its charge was declined")),
            Some(Payment::Refunded {
                refund_id,
                refunded_cents,
                ..
            }) => {
                debug!(instance = %self.instance, order_id = id,
                    "refund asked for again; refunding nothing, republishing the outcome");
                return publish_refunded(ctx, id, refund_id, refunded_cents);
            }
            Some(Payment::Charged(charge)) => charge,
        };
        if charge.charge_id != refund.charge_id {
            warn!(instance = %self.instance, order_id = id, asked = %refund.charge_id,
                stored = %charge.charge_id,
                "refund names another charge; refunding the stored one");
        }

        let (refund_id, refunded_cents) = self.call_refund(id, &charge, &refund).await?;
        ctx.tx()
            .execute(
                sql::PAYMENT_MARK_REFUNDED,
                &[&id, &api::refund_key(id), &refund_id, &refunded_cents],
            )
            .await
            .map_err(Error::db("record the refund", id))?;
        debug!(instance = %self.instance, order_id = id, refund_id = %refund_id,
            refunded_cents, "refunded");
        publish_refunded(ctx, id, refund_id, refunded_cents)
    }

    /// Asks the provider to refund `charge`; returns the refund id and amount.
    async fn call_refund(
        &self,
        id: &str,
        charge: &Charge,
        refund: &RefundPayment,
    ) -> Result<(String, i64)> {
        let key = api::refund_key(id);
        let request = RefundRequest {
            order_id: id.to_owned(),
            amount_cents: refund.amount_cents,
            currency: charge.currency.clone(),
            charge_id: Some(charge.charge_id.clone()),
        };
        debug!(instance = %self.instance, order_id = id, key = %key,
            amount_cents = refund.amount_cents, "refunding");
        let outcome = self
            .gateway
            .refund(&key, &request)
            .await
            .map_err(|source| Error::NoAnswer {
                operation: "refund",
                order_id: id.to_owned(),
                source,
            })?;
        match outcome {
            Outcome::Succeeded(reply) => {
                let refund_id = reply.refund_id.ok_or_else(|| Error::BadReply {
                    operation: "refund",
                    order_id: id.to_owned(),
                    field: "refund_id",
                })?;
                Ok((refund_id, reply.amount_cents.unwrap_or(refund.amount_cents)))
            }
            Outcome::Declined(reply) => Err(Error::RefundDeclined {
                order_id: id.to_owned(),
                reason: reply.reason.unwrap_or_default(),
            }),
            Outcome::Pending(_) => Err(Error::Pending {
                operation: "refund",
                order_id: id.to_owned(),
            }),
            Outcome::Rejected { status, reply } => Err(Error::Rejected {
                operation: "refund",
                order_id: id.to_owned(),
                status,
                reason: reply.reason.unwrap_or_default(),
            }),
        }
    }
}

fn publish_refunded(
    ctx: &mut Context<'_>,
    order_id: &str,
    refund_id: String,
    amount_cents: i64,
) -> Result<()> {
    publish(
        ctx,
        order_id,
        &PaymentRefunded {
            order_id: order_id.to_owned(),
            refund_id,
            amount_cents,
        },
    )
}
