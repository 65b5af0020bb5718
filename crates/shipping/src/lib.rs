//! Shipping, the endpoint that runs the fulfilment saga and books the courier
//! (DESIGN.md section 10).
//!
//! The saga ([`fulfilment`], deciding through [`progress`]) keeps one instance per order
//! in `bus.sagas`. Whichever of OrderPlaced, OrderBilled and PaymentFailed arrives first
//! starts it and requests the payment timeout. Once the order is both placed and billed
//! it sends ShipOrder to this endpoint, whose handler ([`courier`]) books the courier with
//! the idempotency key `shipment-<order id>`, records `shipping.shipments` and publishes
//! OrderShipped, which completes the saga. When the timeout fires unpaid, or PaymentFailed
//! arrives, it sends CancelOrder to Sales and stays open until the payment is final: a
//! charge that lands afterwards is refunded (RefundPayment to Billing), and the saga
//! completes on PaymentRefunded or PaymentFailed. It never ships an unpaid or cancelled
//! order.
//!
//! The courier is called while the receive transaction is open, so the endpoint defaults
//! to batches of one.
//!
//! ```no_run
//! # async fn run(db: transport_pg::Database) -> Result<(), transport_pg::Error> {
//! use std::time::Duration;
//!
//! use gateways::client::GatewayClient;
//!
//! let gateway = GatewayClient::new("http://127.0.0.1:7480", Duration::from_secs(2));
//! let builder = transport_pg::EndpointBuilder::new(shipping::ENDPOINT, db);
//! let endpoint = shipping::install(builder, "sh1", gateway, Duration::from_secs(30))
//!     .start()
//!     .await?;
//! endpoint.run_until_signal(Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```

pub mod courier;
pub mod error;
pub mod fulfilment;
pub mod progress;
mod sql;

use std::sync::Arc;
use std::time::Duration;

use gateways::client::GatewayClient;
use messages::{CancelOrder, RefundPayment, ShipOrder};
use persistence_pg::SagaEndpointExt;
use transport_pg::EndpointBuilder;

pub use courier::Courier;
pub use error::{Error, Result};
pub use fulfilment::{Fulfilment, SAGA_NAME};

/// The endpoint's name: its queue is `bus.shipping_queue`.
pub const ENDPOINT: &str = "shipping";

/// Registers the fulfilment saga, the ShipOrder handler and the routes of the commands
/// the saga sends on `builder`; the events are subscribed to when the endpoint starts.
/// An order still unpaid `payment_timeout` after its saga started is cancelled.
pub fn install(
    builder: EndpointBuilder,
    instance: &str,
    gateway: GatewayClient,
    payment_timeout: Duration,
) -> EndpointBuilder {
    let instance: Arc<str> = instance.into();
    builder
        .route::<ShipOrder>(ENDPOINT)
        .route::<CancelOrder>("sales")
        .route::<RefundPayment>("billing")
        .handler::<ShipOrder, _>(Courier {
            instance: instance.clone(),
            gateway,
        })
        .saga(Fulfilment {
            instance,
            payment_timeout,
        })
}
