//! Sales, the endpoint that owns orders (DESIGN.md section 10).
//!
//! It takes PlaceOrder from the client, stores the order in `sales.orders` and publishes
//! OrderPlaced; the order id is the client's, so a resubmitted PlaceOrder finds its row
//! and changes nothing ([`orders`]). It takes CancelOrder from Shipping's saga: marks the
//! order cancelled, records a customer notification in `sales.notifications` and
//! publishes OrderCancelled. And it follows the events that move an order on
//! (OrderBilled, PaymentFailed, OrderShipped, PaymentRefunded), so `sales.orders` alone
//! answers "where is my order" ([`tracking`]); the status only ever moves forward
//! ([`status`]).
//!
//! Every handler locks the order's row and declares the order id as its lock key, so
//! batches of any size take their locks in one order.
//!
//! ```no_run
//! # async fn run(db: transport_pg::Database) -> Result<(), transport_pg::Error> {
//! let endpoint = sales::install(transport_pg::EndpointBuilder::new(sales::ENDPOINT, db), "s1")
//!     .batch_size(10)
//!     .start()
//!     .await?;
//! endpoint.run_until_signal(std::time::Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```

pub mod error;
pub mod orders;
mod sql;
pub mod status;
pub mod tracking;

use std::sync::Arc;

use messages::{
    CancelOrder, OrderBilled, OrderShipped, PaymentFailed, PaymentRefunded, PlaceOrder,
};
use transport_pg::EndpointBuilder;

pub use error::{Error, Result};
pub use status::OrderStatus;

/// The endpoint's name: its queue is `bus.sales_queue`.
pub const ENDPOINT: &str = "sales";

/// Sales's handlers, one value for every message type; cheap to clone.
#[derive(Debug, Clone)]
pub struct Sales {
    /// This process's instance name, on every log line of the handlers.
    pub(crate) instance: Arc<str>,
}

impl Sales {
    /// The handlers of instance `instance`.
    pub fn new(instance: &str) -> Sales {
        Sales {
            instance: instance.into(),
        }
    }
}

/// Registers every Sales handler on `builder`; the events among them are subscribed to
/// when the endpoint starts.
pub fn install(builder: EndpointBuilder, instance: &str) -> EndpointBuilder {
    let sales = Sales::new(instance);
    builder
        .handler::<PlaceOrder, _>(sales.clone())
        .handler::<CancelOrder, _>(sales.clone())
        .handler::<OrderBilled, _>(sales.clone())
        .handler::<PaymentFailed, _>(sales.clone())
        .handler::<OrderShipped, _>(sales.clone())
        .handler::<PaymentRefunded, _>(sales)
}
