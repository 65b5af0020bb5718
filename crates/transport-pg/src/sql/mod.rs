//! Every SQL statement the transport runs, in one place, named table first, verb second.
//!
//! Dynamic identifiers come only from a validated [`EndpointName`],
//! quoted when its [`QueueTables`] are built; every value is a bind parameter.

pub mod delayed;
pub mod error_queue;
pub mod queue;
pub mod subscription;

use crate::name::{EndpointName, QueueTables};

pub use queue::{QueueStatements, Receive};

/// Whether the endpoint is registered at some installer version and both tables exist.
/// `$1` endpoint name, `$2` queue relation name, `$3` delayed relation name.
pub const INSTALL_CHECK: &str = "\
SELECT (SELECT installer_version FROM bus.endpoints WHERE name = $1),
       to_regclass('bus.' || quote_ident($2)) IS NOT NULL
           AND to_regclass('bus.' || quote_ident($3)) IS NOT NULL";

/// Serializes installers of one endpoint; the class id is "pgbu" in ASCII.
pub const INSTALL_LOCK: &str = "SELECT pg_advisory_xact_lock(1885823605, hashtext($1))";

/// Records the endpoint and the installer version that shaped its tables.
pub const ENDPOINT_UPSERT: &str = "\
INSERT INTO bus.endpoints (name, installer_version)
VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE
SET installer_version = EXCLUDED.installer_version,
    updated_at = now()";

/// Autovacuum settings for tables whose rows are inserted and soon deleted. The default
/// waits for 20 % of the table to be dead, hundreds of thousands of rows on a busy queue;
/// meanwhile every receive steps over the dead index entries. Index cleanup stays on
/// because that dead index head is exactly what the receive probe walks.
const CHURN_STORAGE: &str = "\
autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_insert_scale_factor = 0.0,
    autovacuum_vacuum_insert_threshold = 2000,
    autovacuum_analyze_scale_factor = 0.0,
    autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0,
    vacuum_index_cleanup = on";

/// The idempotent DDL for one endpoint's tables, run under the installer's lock.
pub fn install_ddl(name: &EndpointName, t: &QueueTables) -> String {
    format!(
        "\
CREATE TABLE IF NOT EXISTS {queue} (
    seq         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  uuid        NOT NULL,
    headers     jsonb       NOT NULL,
    body        bytea       NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    claims      integer     NOT NULL DEFAULT 0
);
ALTER TABLE {queue} SET ({CHURN_STORAGE});

CREATE TABLE IF NOT EXISTS {delayed} (
    seq         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    due_at      timestamptz NOT NULL,
    message_id  uuid        NOT NULL,
    headers     jsonb       NOT NULL,
    body        bytea       NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    saga_id     uuid
);
ALTER TABLE {delayed} SET ({CHURN_STORAGE});
CREATE INDEX IF NOT EXISTS \"{name}_delayed_due_idx\" ON {delayed} (due_at);
CREATE INDEX IF NOT EXISTS \"{name}_delayed_saga_idx\" ON {delayed} (saga_id)
    WHERE saga_id IS NOT NULL;
",
        queue = t.queue,
        delayed = t.delayed,
    )
}
