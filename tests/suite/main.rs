//! The end-to-end suite: one test binary, a module per area, a real PostgreSQL.

mod batch;
mod crash;
mod delayed;
mod fixtures;
mod gateways;
mod install;
mod pgbus;
mod pipeline;
mod process;
mod pubsub;
mod receive;
mod recoverability;
mod retail;
mod sagas;
mod send;
mod staying_up;
mod system;
mod upkeep;
mod wakeup;
