//! Statements on one endpoint's queue table, built once per endpoint.

use crate::MAX_BATCH_SIZE;
use crate::name::QueueTables;

/// The queue statements of one endpoint.
#[derive(Debug, Clone)]
pub struct QueueStatements {
    /// Takes up to a batch of messages after seq `$1`; see [`receive`].
    pub receive: Receive,
    /// Takes one message after seq `$1`: the receive while the endpoint is throttled.
    pub receive_one: Receive,
    /// Inserts messages; see [`insert`].
    pub insert: String,
    /// Takes the rows with the seqs in `$1`, if still there and not locked.
    pub take_seqs: String,
    /// Raises the claim count of the next row after `$1`; see [`claim_next`].
    pub claim_next: String,
    /// Moves up to `$1` due rows from the delayed table into the queue.
    pub move_due: String,
    /// Milliseconds until the earliest delayed row is due.
    pub next_due_ms: String,
}

impl QueueStatements {
    /// Builds the statements for `tables`, receiving up to `batch_size` at a time.
    ///
    /// # Panics
    ///
    /// When `batch_size` is outside 1 to [`MAX_BATCH_SIZE`]; the endpoint builder refuses
    /// such a size before any statement is built.
    pub fn new(tables: &QueueTables, batch_size: usize) -> Self {
        QueueStatements {
            receive: Receive::new(&tables.queue, batch_size),
            receive_one: Receive::new(&tables.queue, 1),
            insert: insert(&tables.queue),
            take_seqs: take_seqs(&tables.queue),
            claim_next: claim_next(&tables.queue),
            move_due: super::delayed::move_due(&tables.delayed, &tables.queue),
            next_due_ms: super::delayed::next_due_ms(&tables.delayed),
        }
    }
}

/// A receive statement with the limit written into it, kept together so that a caller
/// that needs to know whether a receive came back short has the number it asked for.
#[derive(Debug, Clone)]
pub struct Receive {
    /// The statement; see [`receive`].
    pub sql: String,
    /// The most messages it takes.
    pub limit: usize,
}

impl Receive {
    /// The receive of up to `limit` messages from `queue`.
    ///
    /// # Panics
    ///
    /// When `limit` is outside 1 to [`MAX_BATCH_SIZE`], as [`receive`] does.
    pub fn new(queue: &str, limit: usize) -> Self {
        Receive {
            sql: receive(queue, limit),
            limit,
        }
    }
}

/// Takes up to `limit` of the oldest visible messages with seq above `$1`.
///
/// `= ANY(ARRAY(...))` and not `IN (...)`: the generic plan of the `IN` form, which a
/// prepared statement switches to after a few runs, is a hash semi-join over a
/// sequential scan of the whole queue. SKIP LOCKED lets competing consumers pass over
/// each other's rows instead of waiting on them.
///
/// The limit is part of the statement's text, not a parameter, because it is the
/// statement's shape rather than a value: an endpoint receives at one batch size. A
/// parameter there made PostgreSQL plan the statement afresh on every run, since a
/// generic plan guesses that a `LIMIT $n` keeps a tenth of the table and so always looks
/// dearer than the plan for the actual limit; on a queue of 20,000 rows the planning then
/// cost more than the execution. With the number in the text the generic plan knows the
/// limit, and the prepared statement settles on it after its first five runs. The number
/// is a checked integer, so nothing from outside reaches the text.
///
/// # Panics
///
/// When `limit` is outside 1 to [`MAX_BATCH_SIZE`].
pub fn receive(queue: &str, limit: usize) -> String {
    assert!(
        (1..=MAX_BATCH_SIZE).contains(&limit),
        "receive limit {limit} is outside 1 to {MAX_BATCH_SIZE}"
    );
    format!(
        "\
DELETE FROM {queue}
WHERE seq = ANY(ARRAY(
    SELECT seq
    FROM {queue}
    WHERE seq > $1
    ORDER BY seq
    LIMIT {limit}
    FOR UPDATE SKIP LOCKED))
RETURNING seq, message_id, headers, body, enqueued_at, claims"
    )
}

/// Inserts one row per array element: `$1` message ids, `$2` headers, `$3` bodies. One
/// statement whatever the count, so it is prepared once, unlike a VALUES list.
pub fn insert(queue: &str) -> String {
    insert_from(queue, 1)
}

/// The parameters of [`insert`].
pub const INSERT_PARAMS: usize = 3;

/// [`insert`] with its three parameters numbered from `$first`, to be one part of a
/// statement that writes several tables.
pub fn insert_from(queue: &str, first: usize) -> String {
    let (ids, headers, bodies) = (first, first + 1, first + 2);
    format!(
        "\
INSERT INTO {queue} (message_id, headers, body)
SELECT m, h, b
FROM unnest(${ids}::uuid[], ${headers}::jsonb[], ${bodies}::bytea[]) AS u(m, h, b)"
    )
}

/// Takes the rows whose seqs are in `$1`, skipping any that another consumer holds: the
/// retake of a batch whose pipelined attempt failed, and the receive of a claimed row.
pub fn take_seqs(queue: &str) -> String {
    format!(
        "\
DELETE FROM {queue}
WHERE seq = ANY(ARRAY(
    SELECT seq
    FROM {queue}
    WHERE seq = ANY($1)
    FOR UPDATE SKIP LOCKED))
RETURNING seq, message_id, headers, body, enqueued_at, claims"
    )
}

/// Vacuums the queue table, unless another vacuum holds it (see [`crate::upkeep`]).
/// Without truncating: cutting the empty pages off the end takes a lock that stops every
/// receive and send meanwhile, and a busy queue grows back into them within seconds
/// (autovacuum still truncates on its visits). VACUUM takes no parameters; `queue` is the
/// validated, quoted name.
pub fn vacuum(queue: &str) -> String {
    format!("VACUUM (SKIP_LOCKED, TRUNCATE false) {queue}")
}

/// Raises the claim count of the oldest unlocked row after `$1`, in a short transaction
/// of its own that commits before the handler runs: if the handler then kills the
/// process, the count survives, and a message that keeps killing its process reaches the
/// claim limit. Only the careful mode after start-up runs it.
///
/// The row lock ends with that short transaction, so the claimer also takes a session
/// advisory lock on the row's seq (class `$2`), held until it has handled the row;
/// otherwise other careful workers would claim the same row again meanwhile and raise its
/// count for nothing. Rows whose advisory lock someone else holds are passed over.
pub fn claim_next(queue: &str) -> String {
    format!(
        "\
UPDATE {queue}
SET claims = claims + 1
WHERE seq = ANY(ARRAY(
    SELECT seq
    FROM {queue}
    WHERE seq > $1
      AND pg_try_advisory_lock($2, (seq % 2147483648)::integer)
    ORDER BY seq
    LIMIT 1
    FOR UPDATE SKIP LOCKED))
RETURNING seq, claims"
    )
}

/// Releases the claimer's advisory locks, including any taken on rows it then skipped.
pub const CLAIM_RELEASE: &str = "SELECT pg_advisory_unlock_all()";
