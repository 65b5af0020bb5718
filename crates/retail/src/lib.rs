//! The retail client and the reference system's schema.
//!
//! This crate owns `migrations/retail` ([`migrations`]): the business tables of Sales,
//! Billing and Shipping, the client's own records (`retail.orders`) and the gateways'
//! ledger (`gateway.ledger`). The endpoint binaries and the gateways apply the set at
//! start-up; `retail migrate` applies it by hand.
//!
//! The client itself has three jobs, one module each:
//!
//! - [`place`]: places a mix of normal, declined and slow orders, recording each in
//!   `retail.orders` in the same transaction as its PlaceOrder send, and marking every
//!   message with the run id in the [`RUN_ID_HEADER`] header, which the framework copies
//!   onto every message the flow causes;
//! - [`status`]: where one order is, from Sales's table and the client's record;
//! - [`verify`]: the five invariants of DESIGN.md section 10, checked against the
//!   client's records, the endpoints' tables, every queue, the error queue and the ledger.

pub mod error;
pub mod place;
mod sql;
pub mod status;
pub mod verify;

pub use error::{Error, Result};

use transport_pg::MigrationSet;

/// The header carrying the run id; its `baggage.` prefix makes the framework copy it onto
/// every message a handler sends, so queue and error-queue rows can be scoped to a run.
pub const RUN_ID_HEADER: &str = "baggage.run_id";

/// The endpoint that takes PlaceOrder.
pub const SALES_ENDPOINT: &str = "sales";

/// The name the client sends under (`sending_endpoint`).
pub const CLIENT_NAME: &str = "retail";

mod embedded {
    refinery::embed_migrations!("../../migrations/retail");
}

/// The reference system's migration set, `migrations/retail`, with its own history table
/// and advisory lock, so it is applied independently of the framework's `bus` set.
pub fn migrations() -> MigrationSet {
    MigrationSet {
        name: "retail",
        schema: "retail",
        history_table: "retail.schema_history",
        // "pgbus" in ASCII, then the set's number; the bus set is 1.
        lock_key: 0x7067_6275_7300_0002,
        runner: embedded::migrations::runner,
    }
}

/// Applies `migrations/bus`, then `migrations/retail`; returns how many of each were new.
pub async fn migrate_all(db: &transport_pg::Database) -> Result<(usize, usize)> {
    let bus = transport_pg::migrate(db, &transport_pg::bus_migrations()).await?;
    let retail = transport_pg::migrate(db, &migrations()).await?;
    Ok((bus, retail))
}

/// Fails with [`Error::NotMigrated`] naming the first table of `tables` that is missing.
pub(crate) async fn require_tables(
    client: &transport_pg::tokio_postgres::Client,
    tables: &[&'static str],
) -> Result<()> {
    for &table in tables {
        let row = client
            .query_one(sql::TABLE_EXISTS, &[&table])
            .await
            .map_err(Error::db("look up tables"))?;
        if !row.get::<_, bool>(0) {
            return Err(Error::NotMigrated { table });
        }
    }
    Ok(())
}
