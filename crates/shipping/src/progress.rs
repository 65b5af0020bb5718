//! What the fulfilment saga knows about one order, and the one function that decides
//! what to do next from it, whatever order the messages came in.
//!
//! [`Progress`] is the saga's data, stored as jsonb in `bus.sagas.data`. Each message
//! records a fact (placed, billed, declined, timed out) and then [`Progress::next`]
//! turns the facts into [`Action`]s, each taken at most once:
//!
//! - placed and billed, not cancelled: ship (ShipOrder);
//! - declined, or timed out unpaid: cancel (CancelOrder), and stay open until the
//!   payment's outcome is final;
//! - cancelled and then billed (a charge that landed late): refund (RefundPayment);
//! - complete on OrderShipped, on PaymentRefunded, or on a decline once cancelled.
//!
//! Nothing ships without a charge, and nothing is cancelled once charged, so an order is
//! never both shipped and cancelled.

use messages::{CancelOrder, OrderBilled, OrderPlaced, RefundPayment, ShipOrder};
use serde::{Deserialize, Serialize};

/// The fulfilment saga's data. Every field has a default, so data stored by an older
/// release keeps decoding when a field is added.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The customer, once OrderPlaced arrived.
    #[serde(default)]
    pub customer_id: Option<String>,
    /// The charge, once OrderBilled arrived.
    #[serde(default)]
    pub charge: Option<ChargeSeen>,
    /// The provider's reason, once PaymentFailed arrived.
    #[serde(default)]
    pub declined: Option<String>,
    /// Whether the payment timeout fired before any payment outcome.
    #[serde(default)]
    pub timed_out: bool,
    /// Whether CancelOrder was sent.
    #[serde(default)]
    pub cancel_sent: bool,
    /// Whether ShipOrder was sent.
    #[serde(default)]
    pub ship_sent: bool,
    /// Whether RefundPayment was sent.
    #[serde(default)]
    pub refund_sent: bool,
}

/// The charge as OrderBilled reported it, kept to refund it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeSeen {
    /// The provider's id for the charge.
    pub charge_id: String,
    /// Minor units charged.
    pub amount_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
}

/// What the saga does after a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send ShipOrder to Shipping itself.
    Ship(ShipOrder),
    /// Send CancelOrder to Sales.
    Cancel(CancelOrder),
    /// Send RefundPayment to Billing.
    Refund(RefundPayment),
    /// Close the saga (and drop its pending timeout).
    Complete,
}

/// The cancel reason when the payment timeout fired first.
pub const TIMED_OUT_REASON: &str = "payment timed out";

impl Progress {
    /// OrderPlaced arrived.
    pub fn placed(&mut self, order_id: &str, placed: &OrderPlaced) -> Vec<Action> {
        self.customer_id
            .get_or_insert_with(|| placed.customer_id.clone());
        self.next(order_id)
    }

    /// OrderBilled arrived.
    pub fn billed(&mut self, order_id: &str, billed: &OrderBilled) -> Vec<Action> {
        self.charge.get_or_insert_with(|| ChargeSeen {
            charge_id: billed.charge_id.clone(),
            amount_cents: billed.amount_cents,
            currency: billed.currency.clone(),
        });
        self.next(order_id)
    }

    /// PaymentFailed arrived: the payment's outcome is final, and nothing was charged.
    pub fn declined(&mut self, order_id: &str, reason: &str) -> Vec<Action> {
        self.declined.get_or_insert_with(|| reason.to_owned());
        self.next(order_id)
    }

    /// The payment timeout fired. It counts only while no outcome has arrived.
    pub fn timeout(&mut self, order_id: &str) -> Vec<Action> {
        if self.charge.is_none() && self.declined.is_none() {
            self.timed_out = true;
        }
        self.next(order_id)
    }

    /// OrderShipped or PaymentRefunded arrived: nothing is left to do.
    pub fn finished(&mut self) -> Vec<Action> {
        vec![Action::Complete]
    }

    /// The actions the facts call for that were not taken yet.
    pub fn next(&mut self, order_id: &str) -> Vec<Action> {
        let mut actions = Vec::new();
        let unpaid = self.charge.is_none();
        if !self.cancel_sent && unpaid && (self.declined.is_some() || self.timed_out) {
            let reason = match &self.declined {
                Some(reason) => format!("payment failed: {reason}"),
                None => TIMED_OUT_REASON.to_owned(),
            };
            self.cancel_sent = true;
            actions.push(Action::Cancel(CancelOrder {
                order_id: order_id.to_owned(),
                reason,
            }));
        }

        if self.cancel_sent {
            if let Some(charge) = &self.charge
                && !self.refund_sent
            {
                self.refund_sent = true;
                actions.push(Action::Refund(RefundPayment {
                    order_id: order_id.to_owned(),
                    charge_id: charge.charge_id.clone(),
                    amount_cents: charge.amount_cents,
                    currency: charge.currency.clone(),
                }));
            }
            // A decline is final and nothing was charged: nothing more will come.
            if self.declined.is_some() && self.charge.is_none() {
                actions.push(Action::Complete);
            }
        } else if let (Some(customer_id), Some(_)) = (&self.customer_id, &self.charge)
            && !self.ship_sent
        {
            self.ship_sent = true;
            actions.push(Action::Ship(ShipOrder {
                order_id: order_id.to_owned(),
                customer_id: customer_id.clone(),
            }));
        }
        actions
    }

    /// Where the saga stands, for logs.
    pub fn stage(&self) -> &'static str {
        match (self.cancel_sent, self.refund_sent, self.ship_sent) {
            (true, true, _) => "refunding",
            (true, false, _) => "cancelled, awaiting the payment's outcome",
            (false, _, true) => "shipping",
            _ => match (self.customer_id.is_some(), self.charge.is_some()) {
                (false, false) => "started",
                (true, false) => "awaiting payment",
                (false, true) => "billed, awaiting the order",
                (true, true) => "ready to ship",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use messages::PaymentFailed;

    use super::*;

    const ID: &str = "o-1";

    fn placed() -> OrderPlaced {
        OrderPlaced {
            order_id: ID.to_owned(),
            customer_id: "c-1".to_owned(),
            amount_cents: 1250,
            currency: "EUR".to_owned(),
            card_token: "tok_ok".to_owned(),
        }
    }

    fn billed() -> OrderBilled {
        OrderBilled {
            order_id: ID.to_owned(),
            charge_id: "ch_1".to_owned(),
            amount_cents: 1250,
            currency: "EUR".to_owned(),
        }
    }

    fn failed() -> PaymentFailed {
        PaymentFailed {
            order_id: ID.to_owned(),
            reason: "card declined".to_owned(),
        }
    }

    fn ship() -> Action {
        Action::Ship(ShipOrder {
            order_id: ID.to_owned(),
            customer_id: "c-1".to_owned(),
        })
    }

    fn is_cancel(actions: &[Action]) -> bool {
        actions.iter().any(|a| matches!(a, Action::Cancel(_)))
    }

    #[test]
    fn ships_once_when_placed_and_billed_in_either_order() {
        let mut a = Progress::default();
        assert_eq!(a.placed(ID, &placed()), []);
        assert_eq!(a.billed(ID, &billed()), [ship()]);

        let mut b = Progress::default();
        assert_eq!(b.billed(ID, &billed()), []);
        assert_eq!(b.stage(), "billed, awaiting the order");
        assert_eq!(b.placed(ID, &placed()), [ship()]);
        assert_eq!(b.stage(), "shipping");

        // Duplicates and a late timeout change nothing.
        assert_eq!(b.billed(ID, &billed()), []);
        assert_eq!(b.placed(ID, &placed()), []);
        assert_eq!(b.timeout(ID), []);
        assert!(!b.timed_out);
    }

    #[test]
    fn a_decline_cancels_once_and_completes_whenever_it_arrives() {
        let mut early = Progress::default();
        let actions = early.declined(ID, &failed().reason);
        assert_eq!(
            actions,
            [
                Action::Cancel(CancelOrder {
                    order_id: ID.to_owned(),
                    reason: "payment failed: card declined".to_owned(),
                }),
                Action::Complete,
            ]
        );

        let mut late = Progress::default();
        late.placed(ID, &placed());
        assert!(is_cancel(&late.declined(ID, "card declined")));
        assert!(!is_cancel(&late.declined(ID, "card declined")));
    }

    #[test]
    fn a_timeout_cancels_then_a_late_charge_is_refunded_not_shipped() {
        let mut p = Progress::default();
        p.placed(ID, &placed());
        let actions = p.timeout(ID);
        assert_eq!(
            actions,
            [Action::Cancel(CancelOrder {
                order_id: ID.to_owned(),
                reason: TIMED_OUT_REASON.to_owned(),
            })]
        );
        assert_eq!(p.stage(), "cancelled, awaiting the payment's outcome");

        let actions = p.billed(ID, &billed());
        assert_eq!(
            actions,
            [Action::Refund(RefundPayment {
                order_id: ID.to_owned(),
                charge_id: "ch_1".to_owned(),
                amount_cents: 1250,
                currency: "EUR".to_owned(),
            })]
        );
        assert_eq!(p.billed(ID, &billed()), [], "refunds once");
        assert_eq!(p.finished(), [Action::Complete]);
    }

    #[test]
    fn a_timeout_then_a_decline_cancels_once_and_completes() {
        let mut p = Progress::default();
        p.placed(ID, &placed());
        assert!(is_cancel(&p.timeout(ID)));
        assert_eq!(p.declined(ID, "card declined"), [Action::Complete]);
    }

    #[test]
    fn a_timeout_after_the_charge_does_nothing() {
        let mut p = Progress::default();
        p.billed(ID, &billed());
        assert_eq!(p.timeout(ID), []);
        assert_eq!(p.placed(ID, &placed()), [ship()]);
    }

    #[test]
    fn stored_data_without_newer_fields_still_decodes() {
        let old: Progress = serde_json::from_str(r#"{"customer_id": "c-1"}"#).unwrap();
        assert_eq!(old.customer_id.as_deref(), Some("c-1"));
        assert!(!old.ship_sent);
    }
}
