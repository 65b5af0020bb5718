//! The peer: pgmq installed SQL-only from the install script its Rust crate embeds
//! (scripts/bench.sh fetches the crate and passes the script's path), checked, and given
//! a ring of the same size and message size as ours.

use std::path::Path;

use transport_pg::tokio_postgres::Client;

use crate::error::{Error, Result};

/// The queue the bench creates.
pub const QUEUE: &str = "bench";

/// pgmq's queue table for [`QUEUE`], quoted.
pub const QUEUE_TABLE: &str = "pgmq.\"q_bench\"";

/// What the check found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Installed {
    /// The version pgmq's control file in the crate names, when found.
    pub version: Option<String>,
    /// `pgmq.metrics` answered with this queue length after the fill.
    pub queue_length: i64,
}

/// Runs the install script on `client` (a fresh database), creates the queue, fills it
/// with `count` messages like `message`, and checks that pgmq answers.
pub async fn install(
    client: &Client,
    script: &Path,
    message: &serde_json::Value,
    count: usize,
) -> Result<Installed> {
    let sql = std::fs::read_to_string(script).map_err(Error::io("read", script))?;
    client.batch_execute(&sql).await.map_err(Error::db(format!(
        "run pgmq's install script {}",
        script.display()
    )))?;
    client
        .execute("SELECT pgmq.create($1)", &[&QUEUE])
        .await
        .map_err(|e| Error::Pgmq(format!("pgmq.create failed: {e}")))?;
    let count = i32::try_from(count).map_err(|_| Error::Config("ring too large".into()))?;
    client
        .execute(
            "SELECT pgmq.send($1, $2::jsonb) FROM generate_series(1, $3::integer)",
            &[&QUEUE, message, &count],
        )
        .await
        .map_err(|e| Error::Pgmq(format!("pgmq.send failed: {e}")))?;

    let row = client
        .query_one("SELECT queue_length FROM pgmq.metrics($1)", &[&QUEUE])
        .await
        .map_err(|e| Error::Pgmq(format!("pgmq.metrics failed: {e}")))?;
    let queue_length: i64 = row.get(0);
    if queue_length != i64::from(count) {
        return Err(Error::Pgmq(format!(
            "pgmq.metrics reports {queue_length} messages after sending {count}"
        )));
    }
    let listed = client
        .query_one(
            "SELECT count(*) FROM pgmq.list_queues() WHERE queue_name = $1",
            &[&QUEUE],
        )
        .await
        .map_err(|e| Error::Pgmq(format!("pgmq.list_queues failed: {e}")))?;
    if listed.get::<_, i64>(0) != 1 {
        return Err(Error::Pgmq(format!(
            "pgmq.list_queues does not list {QUEUE}"
        )));
    }
    Ok(Installed {
        version: control_version(script),
        queue_length,
    })
}

/// The `default_version` of the `pgmq.control` file next to the script's folder, as the
/// crate lays them out (`embedded/pgmq.control`, `embedded/sql/pgmq.sql`).
fn control_version(script: &Path) -> Option<String> {
    let control = script.parent()?.parent()?.join("pgmq.control");
    let text = std::fs::read_to_string(control).ok()?;
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "default_version").then(|| value.trim().trim_matches('\'').to_owned())
    })
}
