//! PostgreSQL as a message transport: queue tables, send, receive and the endpoint host.
//!
//! Each endpoint owns a queue table, `bus.<endpoint>_queue`. Sending is an INSERT into
//! the destination's table inside the sender's own transaction; receiving is a DELETE of
//! the oldest visible rows. A business step, receiving a message, changing business rows
//! and sending messages, therefore commits or rolls back as one PostgreSQL transaction:
//! no broker, no outbox, no two-phase commit.
//!
//! ```no_run
//! use message::{Message, MessageKind};
//! use serde::{Deserialize, Serialize};
//! use transport_pg::{Context, Database, EndpointBuilder, Handler, HandlerError, Sender};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Ping { n: u32 }
//! impl Message for Ping {
//!     const NAME: &'static str = "demo.Ping";
//!     const KIND: MessageKind = MessageKind::Command;
//! }
//!
//! struct Counter;
//! impl Handler<Ping> for Counter {
//!     async fn handle(&self, ping: Ping, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
//!         ctx.tx()
//!             .execute("INSERT INTO demo.pings (n) VALUES ($1)", &[&(ping.n as i32)])
//!             .await?;
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let db = Database::from_url("postgres://postgres@127.0.0.1/demo")?;
//! let endpoint = EndpointBuilder::new("counter", db.clone())
//!     .handler::<Ping, _>(Counter)
//!     .start()
//!     .await?;
//!
//! let client = Sender::builder(&db, "client").route::<Ping>("counter")?.build()?;
//! client.send(&Ping { n: 1 }).await?;
//! endpoint.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```
//!
//! # The unit of work
//!
//! Each worker takes up to a batch of messages in one transaction, runs each handler in a
//! savepoint, writes its sends inside that savepoint, and commits once. A handler that
//! fails (returns an error, panics, or swallows a database error) is rolled back to its
//! savepoint and its message put back with its counter raised, in the same transaction.
//!
//! # Wake-ups
//!
//! After a commit, senders mark the destinations they wrote to, and one task per process
//! notifies them on its own connection; idle receivers wake within milliseconds and poll
//! with a bounded back-off in case a notification was lost. See [`wakeup`].
//!
//! # The error queue
//!
//! Messages that can never be handled, or that used up their attempts, move to
//! `bus.failed_messages` with their reason, in the transaction that received them.
//!
//! # Limits
//!
//! Receive order within a queue is approximate: rows commit out of sequence, competing
//! consumers run in parallel, and retries go to the back. A business that needs order
//! keys it, as a saga does.

mod connect;
mod delayed;
mod envelope;
mod error;
pub mod error_queue;
mod executor;
mod failure;
mod handler;
mod host;
mod install;
mod migrate;
mod name;
pub mod outage;
mod panic_location;
mod pipeline;
mod receive;
mod recoverability;
mod send;
pub mod sql;
mod subscriptions;
mod upkeep;
pub mod wakeup;

pub use connect::{Database, DatabaseSettings};
pub use envelope::{
    CONTENT_TYPE_JSON, CONTENT_TYPE_MSGPACK, Headers, decode_body, encode_body, format_rfc3339,
    header,
};
pub use error::{Error, Result, chain as error_chain};
pub use error_queue::{FailedSelection, RetryReport, retry_failed};
pub use executor::Executor;
pub use failure::{HandlerError, fingerprint, normalize};
pub use handler::{Context, Handler, Tx};
pub use host::{Endpoint, EndpointBuilder, MAX_BATCH_SIZE, Shutdown, wait_for_signal};
pub use install::{INSTALLER_VERSION, InstallOutcome, install_endpoint};
pub use migrate::{MigrationSet, bus_migrations, migrate};
pub use name::{EndpointName, MAX_ENDPOINT_NAME_LEN, QueueTables};
pub use pipeline::Param;
pub use receive::PumpConfig;
pub use recoverability::{NextStep, RetryPolicy};
pub use send::{DEFAULT_MAX_BODY_BYTES, Delivery, Outbox, Routes, Sender, SenderBuilder};
pub use subscriptions::{SUBSCRIPTION_CACHE_TTL, decommission, subscribe, unsubscribe};
pub use upkeep::UpkeepConfig;

/// This machine's host name, for the `sending_host` header.
pub(crate) fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The driver, re-exported so that binaries and tests use the same version.
pub use deadpool_postgres;
/// The driver, re-exported so that binaries and tests use the same version.
pub use tokio_postgres;
