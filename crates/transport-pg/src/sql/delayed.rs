//! Statements on one endpoint's delayed table.

/// Inserts deferred messages: `$1` absolute due times (NULL to use the delay), `$2`
/// delays in milliseconds, then ids, headers, bodies and saga ids. The database clock
/// decides when a delay is up, never the sender's.
pub fn insert(delayed: &str) -> String {
    insert_from(delayed, 1)
}

/// The parameters of [`insert`].
pub const INSERT_PARAMS: usize = 6;

/// [`insert`] with its six parameters numbered from `$first`, to be one part of a
/// statement that writes several tables.
pub fn insert_from(delayed: &str, first: usize) -> String {
    let [due, delay, ids, headers, bodies, sagas]: [usize; INSERT_PARAMS] =
        std::array::from_fn(|i| first + i);
    format!(
        "\
INSERT INTO {delayed} (due_at, message_id, headers, body, saga_id)
SELECT COALESCE(a, now() + d * interval '1 millisecond'), m, h, b, s
FROM unnest(${due}::timestamptz[], ${delay}::bigint[], ${ids}::uuid[], ${headers}::jsonb[],
            ${bodies}::bytea[], ${sagas}::uuid[]) AS u(a, d, m, h, b, s)"
    )
}

/// Moves up to `$1` due messages into the queue in one statement. SKIP LOCKED lets every
/// instance of the endpoint share the work without waiting on each other.
pub fn move_due(delayed: &str, queue: &str) -> String {
    format!(
        "\
WITH due AS (
    DELETE FROM {delayed}
    WHERE seq = ANY(ARRAY(
        SELECT seq
        FROM {delayed}
        WHERE due_at <= now()
        ORDER BY due_at
        LIMIT $1
        FOR UPDATE SKIP LOCKED))
    RETURNING message_id, headers, body)
INSERT INTO {queue} (message_id, headers, body)
SELECT message_id, headers, body
FROM due"
    )
}

/// Milliseconds until the earliest due time (negative when overdue), NULL when empty.
pub fn next_due_ms(delayed: &str) -> String {
    format!(
        "\
SELECT (EXTRACT(EPOCH FROM (min(due_at) - now())) * 1000)::bigint
FROM {delayed}"
    )
}

/// Deletes a saga's pending timeouts when it completes; `$1` the saga id.
pub fn delete_for_saga(delayed: &str) -> String {
    format!("DELETE FROM {delayed} WHERE saga_id = $1")
}
