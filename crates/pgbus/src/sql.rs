//! Every statement the CLI runs of its own, named table first, verb second.
//!
//! Queue and delayed table names come only from a validated
//! [`EndpointName`](transport_pg::EndpointName), quoted by its
//! [`QueueTables`](transport_pg::QueueTables); every value is a bind parameter.

/// Every installed endpoint with its installer version, times, whether its queue table
/// exists, and the event types it subscribes to.
pub const ENDPOINT_LIST: &str = "\
SELECT e.name,
       e.installer_version,
       e.installed_at,
       e.updated_at,
       to_regclass('bus.' || quote_ident(e.name || '_queue')) IS NOT NULL,
       COALESCE(array_agg(s.message_type ORDER BY s.message_type)
                    FILTER (WHERE s.message_type IS NOT NULL),
                ARRAY[]::text[])
FROM bus.endpoints e
LEFT JOIN bus.subscriptions s ON s.endpoint = e.name
GROUP BY e.name
ORDER BY e.name";

/// The names of the installed endpoints.
pub const ENDPOINT_NAMES: &str = "\
SELECT name
FROM bus.endpoints
ORDER BY name";

/// Whether endpoint `$1` is in the registry.
pub const ENDPOINT_EXISTS: &str = "\
SELECT EXISTS (SELECT 1 FROM bus.endpoints WHERE name = $1)";

/// Whether the relations `bus.$1` (queue) and `bus.$2` (delayed) exist.
pub const QUEUE_TABLES_EXIST: &str = "\
SELECT to_regclass('bus.' || quote_ident($1)) IS NOT NULL,
       to_regclass('bus.' || quote_ident($2)) IS NOT NULL";

/// Ready messages and the age in seconds of the oldest, by the database clock.
pub fn queue_stats(queue: &str) -> String {
    format!(
        "\
SELECT count(*),
       EXTRACT(EPOCH FROM now() - min(enqueued_at))::float8
FROM {queue}"
    )
}

/// Delayed messages, how many of them are due, and seconds until the next due time.
pub fn delayed_stats(delayed: &str) -> String {
    format!(
        "\
SELECT count(*),
       count(*) FILTER (WHERE due_at <= now()),
       EXTRACT(EPOCH FROM min(due_at) - now())::float8
FROM {delayed}"
    )
}

/// The oldest `$1` waiting messages, read without taking or locking them.
pub fn queue_peek(queue: &str) -> String {
    format!(
        "\
SELECT seq, message_id, headers, body, enqueued_at,
       EXTRACT(EPOCH FROM now() - enqueued_at)::float8,
       claims
FROM {queue}
ORDER BY seq
LIMIT $1"
    )
}

/// The `$1` delayed messages due first, read without taking or locking them.
pub fn delayed_peek(delayed: &str) -> String {
    format!(
        "\
SELECT seq, message_id, headers, body, enqueued_at,
       EXTRACT(EPOCH FROM now() - enqueued_at)::float8,
       due_at,
       EXTRACT(EPOCH FROM due_at - now())::float8,
       saga_id
FROM {delayed}
ORDER BY due_at, seq
LIMIT $1"
    )
}

/// Failed messages per origin queue.
pub const FAILED_COUNT_BY_ORIGIN: &str = "\
SELECT origin_queue, count(*)
FROM bus.failed_messages
GROUP BY origin_queue";

/// Whether any failed message came from origin queue `$1`.
pub const FAILED_ORIGIN_EXISTS: &str = "\
SELECT EXISTS (SELECT 1 FROM bus.failed_messages WHERE origin_queue = $1)";

/// The origin queues with failed messages, optionally only `$1`.
pub const FAILED_ORIGINS: &str = "\
SELECT DISTINCT origin_queue
FROM bus.failed_messages
WHERE ($1::text IS NULL OR origin_queue = $1)
ORDER BY origin_queue";

/// Failed messages of origin `$1` (every origin when NULL), oldest first, at most `$2`.
pub const FAILED_LIST: &str = "\
SELECT id, origin_queue, message_type, error_kind, error_message, fingerprint,
       failed_attempts, delayed_retries, failed_at,
       EXTRACT(EPOCH FROM now() - failed_at)::float8,
       message_id
FROM bus.failed_messages
WHERE ($1::text IS NULL OR origin_queue = $1)
ORDER BY id
LIMIT $2";

/// Failed messages grouped by fingerprint, largest group first, with the latest message
/// of each group as its sample; origin `$1` (every origin when NULL), at most `$2` groups.
pub const FAILED_GROUP: &str = "\
WITH groups AS (
    SELECT fingerprint,
           count(*) AS n,
           max(id) AS sample_id,
           min(failed_at) AS first_failed_at,
           max(failed_at) AS last_failed_at,
           array_agg(DISTINCT origin_queue ORDER BY origin_queue) AS queues
    FROM bus.failed_messages
    WHERE ($1::text IS NULL OR origin_queue = $1)
    GROUP BY fingerprint)
SELECT g.fingerprint, g.n, g.sample_id, g.queues, f.message_type, f.error_kind,
       f.error_message, g.first_failed_at, g.last_failed_at,
       EXTRACT(EPOCH FROM now() - g.last_failed_at)::float8
FROM groups g
JOIN bus.failed_messages f ON f.id = g.sample_id
ORDER BY g.n DESC, g.fingerprint
LIMIT $2";

/// One failed message, every column.
pub const FAILED_GET: &str = "\
SELECT id, message_id, origin_queue, message_type, headers, body, enqueued_at, failed_at,
       error_kind, error_message, error_source, fingerprint, failed_attempts,
       delayed_retries
FROM bus.failed_messages
WHERE id = $1";

/// How many failed messages match `condition`, whose one parameter is `$1`.
pub fn failed_count(condition: &str) -> String {
    format!(
        "\
SELECT count(*)
FROM bus.failed_messages
WHERE {condition}"
    )
}

/// Deletes up to `$2` failed messages matching `condition` (parameter `$1`). SKIP
/// LOCKED passes over rows a concurrent retry or purge holds, so the two never wait on
/// each other and never both take a row.
pub fn failed_purge(condition: &str) -> String {
    format!(
        "\
DELETE FROM bus.failed_messages
WHERE id = ANY(ARRAY(
    SELECT id
    FROM bus.failed_messages
    WHERE {condition}
    ORDER BY id
    LIMIT $2
    FOR UPDATE SKIP LOCKED))
RETURNING id, origin_queue"
    )
}

/// The delayed messages of saga `$1` (its pending timeouts) in one endpoint's delayed
/// table, served by the table's partial index on `saga_id`.
pub fn delayed_for_saga(delayed: &str) -> String {
    format!(
        "\
SELECT due_at,
       EXTRACT(EPOCH FROM due_at - now())::float8,
       headers->>'message_type'
FROM {delayed}
WHERE saga_id = $1
ORDER BY due_at"
    )
}

/// Up to `$3` sagas of type `$1`, open or completed, created more than `$2` milliseconds
/// ago, oldest first. persistence-pg lists only open ones (`list_open_sagas`); this is the
/// listing without `--open`. The columns are those of its `SagaRecord`.
pub const SAGA_LIST_ANY_STATE: &str = "\
SELECT id, saga_type, correlation, state, data, version, started_by, originator,
       created_at, updated_at, completed_at
FROM bus.sagas
WHERE saga_type = $1
  AND created_at < now() - $2::bigint * interval '1 millisecond'
ORDER BY created_at
LIMIT $3";

/// The database's clock, against which saga ages are measured.
pub const NOW: &str = "SELECT now()";
