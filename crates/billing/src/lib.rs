//! Billing, the endpoint that takes the money (DESIGN.md section 10).
//!
//! It handles OrderPlaced by charging the payment provider with the order id as
//! idempotency key, and publishes OrderBilled or PaymentFailed ([`charge`]); it handles
//! RefundPayment from Shipping's saga by refunding a charge that landed after the order
//! was cancelled, and publishes PaymentRefunded ([`refund`]). `billing.payments` holds
//! one row per order ([`payment`]), so a repeated message charges or refunds nothing new
//! and republishes the same outcome.
//!
//! A declined card is a business outcome (PaymentFailed), not an error. A pending answer
//! (a slow charge still settling), a timeout or a 5xx is a retryable failure: the host's
//! retry policy tries again with the same key, so its whole window (the delayed retries'
//! back-off) must be longer than the provider's settle time. The provider is called
//! while the receive transaction is open, with a short timeout, so the endpoint defaults
//! to batches of one: a slow provider holds one message, not fifty.
//!
//! ```no_run
//! # async fn run(db: transport_pg::Database) -> Result<(), transport_pg::Error> {
//! use std::time::Duration;
//!
//! use gateways::client::GatewayClient;
//!
//! let gateway = GatewayClient::new("http://127.0.0.1:7480", Duration::from_secs(2));
//! let builder = transport_pg::EndpointBuilder::new(billing::ENDPOINT, db);
//! let endpoint = billing::install(builder, "b1", gateway).start().await?;
//! endpoint.run_until_signal(Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```

pub mod charge;
pub mod error;
pub mod payment;
pub mod refund;
mod sql;

use std::sync::Arc;

use gateways::client::GatewayClient;
use messages::{OrderPlaced, RefundPayment};
use transport_pg::EndpointBuilder;

pub use error::{Error, Result};

/// The endpoint's name: its queue is `bus.billing_queue`.
pub const ENDPOINT: &str = "billing";

/// Billing's handlers, one value for both message types; cheap to clone.
#[derive(Clone)]
pub struct Billing {
    /// This process's instance name, on every log line of the handlers.
    pub(crate) instance: Arc<str>,
    /// The payment provider.
    pub(crate) gateway: GatewayClient,
}

impl Billing {
    /// The handlers of instance `instance`, calling the provider through `gateway`.
    pub fn new(instance: &str, gateway: GatewayClient) -> Billing {
        Billing {
            instance: instance.into(),
            gateway,
        }
    }
}

/// Registers both Billing handlers on `builder`; OrderPlaced is subscribed to when the
/// endpoint starts.
pub fn install(
    builder: EndpointBuilder,
    instance: &str,
    gateway: GatewayClient,
) -> EndpointBuilder {
    let billing = Billing::new(instance, gateway);
    builder
        .handler::<OrderPlaced, _>(billing.clone())
        .handler::<RefundPayment, _>(billing)
}
