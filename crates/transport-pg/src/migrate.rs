//! Applies a versioned migration set under an advisory lock on a dedicated connection.
//!
//! refinery takes no lock of its own, so several processes starting at once would race
//! to apply the same files; a session advisory lock, held on a connection of its own for
//! the whole run, serializes them. Each set keeps its history in its own table.

use std::time::Duration;

use tracing::info;

use crate::connect::Database;
use crate::error::{Error, Result};

mod embedded {
    refinery::embed_migrations!("../../migrations/bus");
}

/// A migration set: its files, the schema it lives in, its history table and its lock.
pub struct MigrationSet {
    /// A short name for logs and errors, such as `bus`.
    pub name: &'static str,
    /// The schema created before the history table, which lives in it.
    pub schema: &'static str,
    /// The history table, schema-qualified.
    pub history_table: &'static str,
    /// The advisory lock key that serializes runs of this set.
    pub lock_key: i64,
    /// The embedded migrations.
    pub runner: fn() -> refinery::Runner,
}

/// The framework's own set, `migrations/bus`.
pub fn bus_migrations() -> MigrationSet {
    MigrationSet {
        name: "bus",
        schema: "bus",
        history_table: "bus.schema_history",
        // "pgbus" in ASCII, then the set's number.
        lock_key: 0x7067_6275_7300_0001,
        runner: embedded::migrations::runner,
    }
}

/// How long a start-up waits for another process's migration run before giving up.
const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(120);

/// Applies every migration of `set` not yet applied; returns how many were applied.
pub async fn migrate(db: &Database, set: &MigrationSet) -> Result<usize> {
    let mut client = db.connect("migrations").await?;

    // lock_timeout bounds the wait for the advisory lock too; the session setting is
    // fine here because this connection is ours alone and closed afterwards.
    client
        .batch_execute(&format!(
            "SET lock_timeout = {}",
            MIGRATION_LOCK_WAIT.as_millis()
        ))
        .await
        .map_err(Error::db("migration set-up"))?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&set.lock_key])
        .await
        .map_err(|source| {
            if source.code().map(|c| c.code()) == Some("55P03") {
                Error::LockTimeout {
                    what: "migration",
                    waited: MIGRATION_LOCK_WAIT,
                }
            } else {
                Error::Database {
                    op: format!("lock for {} migrations", set.name),
                    source,
                }
            }
        })?;

    // The schema must exist before refinery creates its history table in it. The
    // schema name is a constant of ours, never user input.
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", set.schema))
        .await
        .map_err(Error::db("create schema"))?;

    let mut runner = (set.runner)();
    runner.set_migration_table_name(set.history_table);
    let report = runner
        .run_async(&mut client)
        .await
        .map_err(|source| Error::Migration {
            set: set.name,
            source,
        })?;

    let applied = report.applied_migrations().len();
    if applied > 0 {
        info!(set = set.name, applied, "applied migrations");
    }
    // Closing the connection releases the lock; unlock anyway so a long-lived client
    // pool in a test does not keep it.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&set.lock_key])
        .await;
    Ok(applied)
}
