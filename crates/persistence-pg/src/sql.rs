//! Every statement on `bus.sagas`, in one place, named table first, verb second.
//!
//! The table name is a constant of ours, so no statement has a dynamic identifier; every
//! value is a bind parameter. Each statement is served by an index in its generic plan (the
//! suite checks with `plan_cache_mode = force_generic_plan`): the primary key, the unique
//! `(saga_type, correlation)` key, or one of the two partial indexes of `V4__sagas.sql`.

/// The columns the runtime reads when it locks a saga, in the order `store` reads them.
macro_rules! step_columns {
    () => {
        "id, correlation, state, data, version, originator, originator_correlation_id"
    };
}

/// The columns of an operator's [`SagaRecord`](crate::SagaRecord).
macro_rules! record_columns {
    () => {
        "id, saga_type, correlation, state, data, version, started_by, originator, \
         created_at, updated_at, completed_at"
    };
}

/// Finds the saga of type `$1` with correlation value `$2` and locks its row until the
/// receive transaction ends, so that messages for one saga are handled one at a time.
pub const SAGA_LOCK_BY_CORRELATION: &str = concat!(
    "SELECT ",
    step_columns!(),
    "
FROM bus.sagas
WHERE saga_type = $1
  AND correlation = $2
FOR UPDATE"
);

/// Finds saga `$1` of type `$2` by id and locks it: how a timeout reaches the very
/// instance that requested it, never a later one with the same correlation value.
pub const SAGA_LOCK_BY_ID: &str = concat!(
    "SELECT ",
    step_columns!(),
    "
FROM bus.sagas
WHERE id = $1
  AND saga_type = $2
FOR UPDATE"
);

/// Creates the saga unless one with the same type and correlation value exists, or locks
/// the one that does, in one statement: `$1` id, `$2` type, `$3` correlation, `$4` initial
/// data, `$5` the message type that starts it, `$6` the originator's reply-to endpoint,
/// `$7` the correlation id replies carry. The last column says whether it was created.
///
/// ON CONFLICT DO NOTHING, not a plain INSERT: when another transaction has inserted the
/// same key and not yet committed, this waits for it and then inserts nothing instead of
/// failing on the unique key (which would burn one of the message's retries). The lock
/// then finds nothing either, because the winner's row is newer than this statement's
/// snapshot, so the statement returns no row; run again, it locks the winner's row.
pub const SAGA_LOCK_OR_CREATE: &str = concat!(
    "WITH created AS (
    INSERT INTO bus.sagas (id, saga_type, correlation, data, started_by, originator,
                           originator_correlation_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (saga_type, correlation) DO NOTHING
    RETURNING ",
    step_columns!(),
    "
), found AS (
    SELECT ",
    step_columns!(),
    "
    FROM bus.sagas
    WHERE saga_type = $2
      AND correlation = $3
    FOR UPDATE
)
SELECT *, true FROM created
UNION ALL
SELECT *, false FROM found WHERE NOT EXISTS (SELECT FROM created)"
);

/// The UPDATE of [`SAGA_SAVE`], shared with [`SAGA_SAVE_CHECKED`].
macro_rules! save_update {
    () => {
        "UPDATE bus.sagas
SET data = $3,
    version = version + 1,
    updated_at = now()
WHERE id = $1
  AND version = $2"
    };
}

/// The UPDATE of [`SAGA_CLOSE`], shared with [`SAGA_CLOSE_CHECKED`].
macro_rules! close_update {
    () => {
        "UPDATE bus.sagas
SET data = $3,
    version = version + 1,
    state = 'completed',
    completed_at = now(),
    updated_at = now()
WHERE id = $1
  AND version = $2
  AND state = 'open'"
    };
}

/// Wraps a save's UPDATE so that the server raises an error unless it changed one row.
///
/// A step in a pipelined batch does not wait for its save's answer, and the batch's
/// COMMIT goes out before that answer is read, so a row count checked by the client would
/// come too late; an error aborts the transaction, which then does not commit. The cast
/// of text that is not a number is the error, and its message says what failed. The text
/// is built from the row count, so the planner cannot fold the cast into an error at
/// planning time.
macro_rules! checked {
    ($update:expr, $wanted:literal) => {
        concat!(
            "WITH saved AS (\n",
            $update,
            "\nRETURNING 1
)
SELECT CASE count(*) WHEN 1 THEN 1
       ELSE ('saga ' || $1 || ' was not saved: ' || count(*)
             || ' rows ",
            $wanted,
            "')::int
       END
FROM saved"
        )
    };
}

/// Saves saga `$1`'s data `$3` and raises its version, if the version is still `$2`.
/// The row is locked, so the check only guards against a bug; it costs nothing.
pub const SAGA_SAVE: &str = save_update!();

/// [`SAGA_SAVE`], raising an error unless it saved the row: for a save whose answer is
/// not awaited.
pub const SAGA_SAVE_CHECKED: &str = checked!(save_update!(), "at version ' || $2 || '");

/// Saves saga `$1`'s final data `$3` and closes it, if its version is still `$2`. The row
/// stays as a closed record until the purge.
pub const SAGA_CLOSE: &str = close_update!();

/// [`SAGA_CLOSE`], raising an error unless it closed the row: for a close whose answer is
/// not awaited.
pub const SAGA_CLOSE_CHECKED: &str = checked!(close_update!(), "open at version ' || $2 || '");

/// Deletes up to `$3` closed records of type `$1` that completed more than `$2`
/// milliseconds ago, by the database's clock.
///
/// `= ANY(ARRAY(...))` keeps the generic plan on the partial index; SKIP LOCKED means the
/// purge never waits on a row another transaction holds (a late message looking at it),
/// so it cannot add a lock wait to the receive transaction it runs in.
pub const SAGA_PURGE_CLOSED: &str = "\
DELETE FROM bus.sagas
WHERE id = ANY(ARRAY(
    SELECT id
    FROM bus.sagas
    WHERE saga_type = $1
      AND state = 'completed'
      AND completed_at < now() - $2::bigint * interval '1 millisecond'
    ORDER BY completed_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED))";

/// The saga of type `$1` with correlation value `$2`, without locking it.
pub const SAGA_FIND_BY_CORRELATION: &str = concat!(
    "SELECT ",
    record_columns!(),
    "
FROM bus.sagas
WHERE saga_type = $1
  AND correlation = $2"
);

/// Saga `$1`, without locking it.
pub const SAGA_FIND_BY_ID: &str = concat!(
    "SELECT ",
    record_columns!(),
    "
FROM bus.sagas
WHERE id = $1"
);

/// Up to `$3` open sagas of type `$1` created more than `$2` milliseconds ago, oldest
/// first: the ones an operator suspects are stuck.
pub const SAGA_LIST_OPEN: &str = concat!(
    "SELECT ",
    record_columns!(),
    "
FROM bus.sagas
WHERE saga_type = $1
  AND state = 'open'
  AND created_at < now() - $2::bigint * interval '1 millisecond'
ORDER BY created_at
LIMIT $3"
);

/// Every statement with a name, for the plan checks in the test suite.
pub const ALL: [(&str, &str); 11] = [
    ("SAGA_LOCK_BY_CORRELATION", SAGA_LOCK_BY_CORRELATION),
    ("SAGA_LOCK_BY_ID", SAGA_LOCK_BY_ID),
    ("SAGA_LOCK_OR_CREATE", SAGA_LOCK_OR_CREATE),
    ("SAGA_SAVE", SAGA_SAVE),
    ("SAGA_SAVE_CHECKED", SAGA_SAVE_CHECKED),
    ("SAGA_CLOSE", SAGA_CLOSE),
    ("SAGA_CLOSE_CHECKED", SAGA_CLOSE_CHECKED),
    ("SAGA_PURGE_CLOSED", SAGA_PURGE_CLOSED),
    ("SAGA_FIND_BY_CORRELATION", SAGA_FIND_BY_CORRELATION),
    ("SAGA_FIND_BY_ID", SAGA_FIND_BY_ID),
    ("SAGA_LIST_OPEN", SAGA_LIST_OPEN),
];
