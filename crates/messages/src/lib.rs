//! The retail contract: the commands and events that Sales, Billing, Shipping and the
//! retail client exchange, named `retail.<Type>`.
//!
//! The order id is chosen by the client, so a resubmitted [`PlaceOrder`] names the same
//! order and is a no-op. The card token travels from [`PlaceOrder`] through
//! [`OrderPlaced`] to the charge, and decides it the way a real provider's test cards do
//! (see [`card`]). Amounts are integer minor units (cents) with an ISO 4217 currency code.
//!
//! Compatibility rule: a field added to a message later must be an `Option` or carry
//! `#[serde(default)]`, so that a message written by an older sender still decodes; never
//! rename or remove a field, and never change a type's `NAME`.
//!
//! | Type | Kind | Sent by | Handled by |
//! | --- | --- | --- | --- |
//! | [`PlaceOrder`] | command | the client | Sales |
//! | [`OrderPlaced`] | event | Sales | Billing, Shipping, Sales |
//! | [`OrderBilled`] | event | Billing | Shipping, Sales |
//! | [`PaymentFailed`] | event | Billing | Shipping, Sales |
//! | [`CancelOrder`] | command | Shipping's saga | Sales |
//! | [`OrderCancelled`] | event | Sales | whoever subscribes |
//! | [`ShipOrder`] | command | Shipping's saga | Shipping |
//! | [`OrderShipped`] | event | Shipping | Shipping's saga, Sales |
//! | [`RefundPayment`] | command | Shipping's saga | Billing |
//! | [`PaymentRefunded`] | event | Billing | Shipping's saga, Sales |
//! | [`PaymentTimeout`] | command (timeout) | Shipping's saga, to itself | Shipping's saga |

use message::{Message, MessageKind};
use serde::{Deserialize, Serialize};

/// The card tokens the stand-in payment provider knows, and what each does to a charge.
pub mod card {
    /// Approved at once.
    pub const APPROVE: &str = "tok_ok";
    /// Declined at once: a definite answer, never worth a retry.
    pub const DECLINE: &str = "tok_decline";
    /// Approved after the provider's settle time, longer than a caller's HTTP timeout;
    /// repeats of the key get a retryable "pending" answer until it settles.
    pub const SLOW: &str = "tok_slow";
}

macro_rules! retail_message {
    ($ty:ident, $kind:ident) => {
        impl Message for $ty {
            const NAME: &'static str = concat!("retail.", stringify!($ty));
            const KIND: MessageKind = MessageKind::$kind;
        }
    };
}

/// The client asks Sales to take an order. The order id is the client's, so sending the
/// same order twice is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrder {
    /// Chosen by the client; unique per order.
    pub order_id: String,
    /// Who ordered.
    pub customer_id: String,
    /// The order's total in minor units (cents).
    pub amount_cents: i64,
    /// ISO 4217 code, e.g. `EUR`.
    pub currency: String,
    /// The payment method, passed on to the charge; see [`card`].
    pub card_token: String,
}
retail_message!(PlaceOrder, Command);

/// Sales stored a new order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The client's order id.
    pub order_id: String,
    /// Who ordered.
    pub customer_id: String,
    /// The amount to charge, in minor units.
    pub amount_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The payment method from [`PlaceOrder`].
    pub card_token: String,
}
retail_message!(OrderPlaced, Event);

/// Billing charged the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderBilled {
    /// The client's order id.
    pub order_id: String,
    /// The provider's id for the charge, needed to refund it.
    pub charge_id: String,
    /// The amount charged, in minor units.
    pub amount_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
}
retail_message!(OrderBilled, Event);

/// The provider declined the charge; this outcome is final.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    /// The client's order id.
    pub order_id: String,
    /// The provider's reason, for the customer notification.
    pub reason: String,
}
retail_message!(PaymentFailed, Event);

/// The saga asks Sales to cancel an order that was not paid in time or not at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelOrder {
    /// The client's order id.
    pub order_id: String,
    /// Why, e.g. `payment failed: card declined` or `payment timed out`.
    pub reason: String,
}
retail_message!(CancelOrder, Command);

/// Sales cancelled the order and notified the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// The client's order id.
    pub order_id: String,
    /// The reason from [`CancelOrder`].
    pub reason: String,
}
retail_message!(OrderCancelled, Event);

/// The saga asks Shipping to book the courier for a placed and billed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipOrder {
    /// The client's order id.
    pub order_id: String,
    /// Who receives it.
    pub customer_id: String,
}
retail_message!(ShipOrder, Command);

/// The courier took the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderShipped {
    /// The client's order id.
    pub order_id: String,
    /// The courier's tracking number.
    pub tracking_number: String,
}
retail_message!(OrderShipped, Event);

/// The saga asks Billing to give back a charge that landed after the order was cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundPayment {
    /// The client's order id.
    pub order_id: String,
    /// The charge to refund, from [`OrderBilled`].
    pub charge_id: String,
    /// How much to give back, in minor units: the whole charge.
    pub amount_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
}
retail_message!(RefundPayment, Command);

/// Billing refunded the charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    /// The client's order id.
    pub order_id: String,
    /// The provider's id for the refund.
    pub refund_id: String,
    /// The amount given back, in minor units.
    pub amount_cents: i64,
}
retail_message!(PaymentRefunded, Event);

/// The fulfilment saga's own timeout: if the order is still unpaid when this arrives, the
/// saga cancels it. Sent deferred by the saga to its own endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentTimeout {
    /// The client's order id, the saga's correlation value.
    pub order_id: String,
}
retail_message!(PaymentTimeout, Command);

#[cfg(test)]
mod tests {
    use super::*;

    fn name_and_kind<M: Message>() -> (&'static str, MessageKind) {
        (M::NAME, M::KIND)
    }

    #[test]
    fn every_type_has_a_valid_retail_name() {
        let all = [
            name_and_kind::<PlaceOrder>(),
            name_and_kind::<OrderPlaced>(),
            name_and_kind::<OrderBilled>(),
            name_and_kind::<PaymentFailed>(),
            name_and_kind::<CancelOrder>(),
            name_and_kind::<OrderCancelled>(),
            name_and_kind::<ShipOrder>(),
            name_and_kind::<OrderShipped>(),
            name_and_kind::<RefundPayment>(),
            name_and_kind::<PaymentRefunded>(),
            name_and_kind::<PaymentTimeout>(),
        ];
        for (name, _) in all {
            assert!(message::is_valid_type_name(name), "{name}");
            assert!(name.starts_with("retail."), "{name}");
        }
        assert_eq!(PlaceOrder::NAME, "retail.PlaceOrder");
        assert_eq!(OrderPlaced::KIND, MessageKind::Event);
        assert_eq!(PaymentTimeout::KIND, MessageKind::Command);
    }

    #[test]
    fn a_body_with_an_extra_field_still_decodes() {
        #[derive(Serialize)]
        struct Newer<'a> {
            order_id: &'a str,
            reason: &'a str,
            added_later: u32,
        }
        let body = rmp_serde::to_vec_named(&Newer {
            order_id: "o-1",
            reason: "declined",
            added_later: 7,
        })
        .unwrap();
        let old: PaymentFailed = rmp_serde::from_slice(&body).unwrap();
        assert_eq!(old.order_id, "o-1");
    }
}
