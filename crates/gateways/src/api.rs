//! The wire: paths, the idempotency key header, the request and reply bodies, and the
//! idempotency keys Billing and Shipping derive from the order id.
//!
//! Every answer is a JSON [`Reply`]. Its HTTP status says what a caller may do next:
//!
//! | Status | `status` field | Meaning |
//! | --- | --- | --- |
//! | 200 | `succeeded` | done; repeats of the key get this same answer |
//! | 402 | `declined` | definite refusal (card declined, nothing to refund); never retry |
//! | 409 | `pending` | the key's first request is still in flight; retry after `retry_after_ms` |
//! | 400 | `error` | malformed request or missing `Idempotency-Key`; never retry |
//! | 422 | `error` | the key was first used for a different request; never retry |
//! | 500, 503 | `error` | transient (database trouble, injected fault); retry with the same key |

use serde::{Deserialize, Serialize};

/// `POST`: charge a card.
pub const CHARGE_PATH: &str = "/v1/charges";
/// `POST`: refund (part of) an order's charge.
pub const REFUND_PATH: &str = "/v1/refunds";
/// `POST`: book the courier for an order.
pub const SHIPMENT_PATH: &str = "/v1/shipments";
/// `GET`: 200 while the gateways can reach their database.
pub const HEALTH_PATH: &str = "/health";

/// The header carrying the idempotency key; required on every `POST`.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The longest idempotency key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 200;

/// The key Billing charges order `order_id` with.
pub fn charge_key(order_id: &str) -> String {
    format!("charge-{order_id}")
}

/// The key Billing refunds order `order_id` with.
pub fn refund_key(order_id: &str) -> String {
    format!("refund-{order_id}")
}

/// The key Shipping books the courier for order `order_id` with.
pub fn shipment_key(order_id: &str) -> String {
    format!("shipment-{order_id}")
}

/// `POST /v1/charges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeRequest {
    /// The order paid for; kept in the ledger apart from the key.
    pub order_id: String,
    /// Minor units (cents), at least 0.
    pub amount_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Decides the outcome; see `messages::card`.
    pub card_token: String,
}

/// `POST /v1/refunds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    /// The order whose charge is refunded.
    pub order_id: String,
    /// Minor units to give back; at most what the order's charge has left.
    pub amount_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The charge to refund; when given, it must be the order's charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge_id: Option<String>,
}

/// `POST /v1/shipments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentRequest {
    /// The order to ship.
    pub order_id: String,
    /// Who receives it.
    pub customer_id: String,
}

/// The `status` field of a [`Reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyStatus {
    /// Done.
    Succeeded,
    /// Definitely refused.
    Declined,
    /// Still in flight; ask again.
    Pending,
    /// The request failed; the HTTP status says whether to retry.
    Error,
}

/// The body of every answer; fields that do not apply are left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// What happened.
    pub status: ReplyStatus,
    /// The order the key belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// The provider's id for a succeeded charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge_id: Option<String>,
    /// The provider's id for a succeeded refund.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
    /// The courier's tracking number for a booked shipment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
    /// Minor units charged or refunded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<i64>,
    /// Why it was declined or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `pending`: when asking again is likely to find it settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl Reply {
    /// A reply with only `status` set.
    pub fn new(status: ReplyStatus) -> Reply {
        Reply {
            status,
            order_id: None,
            charge_id: None,
            refund_id: None,
            tracking_number: None,
            amount_cents: None,
            reason: None,
            retry_after_ms: None,
        }
    }

    /// An `error` reply with `reason`.
    pub fn error(reason: impl Into<String>) -> Reply {
        Reply {
            reason: Some(reason.into()),
            ..Reply::new(ReplyStatus::Error)
        }
    }
}
