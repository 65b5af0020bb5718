//! Stand-ins for the two external services of the retail system, the payment provider
//! (charge, refund) and the courier (book a shipment), served over HTTP on a loopback
//! port by the `gateways` binary, and a small client for them ([`client`]).
//!
//! They behave like the real thing where it matters to the system's invariants: every
//! request carries an idempotency key, recorded in the ledger `gateway.ledger` (from
//! `migrations/retail`) before anything takes effect, so a retry can never charge or ship
//! twice; a repeated key gets the first answer, or a retryable "pending" while the first
//! is in flight; the card token decides a charge (see `messages::card`); a slow charge is
//! settled by a task of its own after the settle time, whether or not its caller is still
//! there. Flags add latency and random transient 5xx answers.
//!
//! Modules: [`api`] is the wire (paths, bodies, statuses, key derivation), `ledger` owns
//! the SQL, [`server`] the routes and settle tasks, [`client`] the caller's side.

pub mod api;
pub mod client;
pub mod error;
mod ledger;
pub mod server;

pub use error::{Error, Result};
pub use ledger::Operation;
