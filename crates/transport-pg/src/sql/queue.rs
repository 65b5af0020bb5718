//! Statements on one endpoint's queue table, built once per endpoint.

use crate::name::QueueTables;

/// The queue statements of one endpoint.
#[derive(Debug, Clone)]
pub struct QueueStatements {
    /// Takes up to `$2` messages after seq `$1`; see [`receive`].
    pub receive: String,
    /// Inserts messages; see [`insert`].
    pub insert: String,
}

impl QueueStatements {
    /// Builds the statements for `tables`.
    pub fn new(tables: &QueueTables) -> Self {
        QueueStatements {
            receive: receive(&tables.queue),
            insert: insert(&tables.queue),
        }
    }
}

/// Takes up to `$2` of the oldest visible messages with seq above `$1`.
///
/// `= ANY(ARRAY(...))` and not `IN (...)`: the generic plan of the `IN` form, which a
/// prepared statement switches to after a few runs, is a hash semi-join over a
/// sequential scan of the whole queue. SKIP LOCKED lets competing consumers pass over
/// each other's rows instead of waiting on them.
pub fn receive(queue: &str) -> String {
    format!(
        "\
DELETE FROM {queue}
WHERE seq = ANY(ARRAY(
    SELECT seq
    FROM {queue}
    WHERE seq > $1
    ORDER BY seq
    LIMIT $2
    FOR UPDATE SKIP LOCKED))
RETURNING seq, message_id, headers, body, enqueued_at, claims"
    )
}

/// Inserts one row per array element: `$1` message ids, `$2` headers, `$3` bodies. One
/// statement whatever the count, so it is prepared once, unlike a VALUES list.
pub fn insert(queue: &str) -> String {
    format!(
        "\
INSERT INTO {queue} (message_id, headers, body)
SELECT m, h, b
FROM unnest($1::uuid[], $2::jsonb[], $3::bytea[]) AS u(m, h, b)"
    )
}
