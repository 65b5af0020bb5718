//! The saga store: reading, locking, creating, saving and closing rows of `bus.sagas`, and
//! the operator's look-ups (find one, list open ones, purge closed ones).
//!
//! Everything takes an [`Executor`], so the same functions run inside a handler's receive
//! transaction and on a tool's own connection. The statements are in [`crate::sql`].

use std::time::{Duration, SystemTime};

use serde_json::Value;
use transport_pg::tokio_postgres::Row;
use transport_pg::tokio_postgres::types::ToSql;
use transport_pg::{Executor, Param, Tx};
use uuid::Uuid;

use crate::error::SagaError;
use crate::sql;

/// A saga row as the runtime locked it.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub id: Uuid,
    pub correlation: String,
    pub open: bool,
    pub data: Value,
    pub version: i64,
    pub originator: Option<String>,
    pub originator_correlation_id: Option<String>,
}

impl Instance {
    fn from_row(row: &Row) -> Instance {
        let state: String = row.get(2);
        Instance {
            id: row.get(0),
            correlation: row.get(1),
            open: state == STATE_OPEN,
            data: row.get(3),
            version: row.get(4),
            originator: row.get(5),
            originator_correlation_id: row.get(6),
        }
    }
}

const STATE_OPEN: &str = "open";
const STATE_COMPLETED: &str = "completed";

/// Whether a saga is still running or completed (a closed record awaiting its purge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaState {
    /// Still handling messages.
    Open,
    /// Completed; kept so late messages find it closed, until the retention runs out.
    Completed,
}

impl SagaState {
    /// The value stored in `bus.sagas.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Open => STATE_OPEN,
            SagaState::Completed => STATE_COMPLETED,
        }
    }
}

/// One saga as an operator sees it.
#[derive(Debug, Clone)]
pub struct SagaRecord {
    /// The instance's id.
    pub id: Uuid,
    /// Its type, `Saga::NAME`.
    pub saga_type: String,
    /// Its correlation value.
    pub correlation: String,
    /// Open, or completed and awaiting its purge.
    pub state: SagaState,
    /// Its data as stored.
    pub data: Value,
    /// How many steps have saved it.
    pub version: i64,
    /// The message type that started it.
    pub started_by: String,
    /// Where replies to its originator go, if its first message had a `reply_to`.
    pub originator: Option<String>,
    /// When it started.
    pub created_at: SystemTime,
    /// When a step last saved it.
    pub updated_at: SystemTime,
    /// When it completed.
    pub completed_at: Option<SystemTime>,
}

impl SagaRecord {
    fn from_row(row: &Row) -> SagaRecord {
        let state: String = row.get(3);
        SagaRecord {
            id: row.get(0),
            saga_type: row.get(1),
            correlation: row.get(2),
            state: if state == STATE_OPEN {
                SagaState::Open
            } else {
                SagaState::Completed
            },
            data: row.get(4),
            version: row.get(5),
            started_by: row.get(6),
            originator: row.get(7),
            created_at: row.get(8),
            updated_at: row.get(9),
            completed_at: row.get(10),
        }
    }
}

/// Finds the saga of `saga_type` with correlation value `correlation`, open or closed.
pub async fn find_saga(
    exec: &impl Executor,
    saga_type: &str,
    correlation: &str,
) -> Result<Option<SagaRecord>, SagaError> {
    let rows = query(
        exec,
        sql::SAGA_FIND_BY_CORRELATION,
        &[&saga_type, &correlation],
    )
    .await
    .map_err(db("find", saga_type, correlation))?;
    Ok(rows.first().map(SagaRecord::from_row))
}

/// Finds saga `id` (as in a message's `saga_id` header), open or closed.
pub async fn find_saga_by_id(
    exec: &impl Executor,
    id: Uuid,
) -> Result<Option<SagaRecord>, SagaError> {
    let rows = query(exec, sql::SAGA_FIND_BY_ID, &[&id]).await.map_err(db(
        "find",
        "(any type)",
        &id.to_string(),
    ))?;
    Ok(rows.first().map(SagaRecord::from_row))
}

/// Lists up to `limit` open sagas of `saga_type` that started more than `older_than` ago,
/// oldest first.
pub async fn list_open_sagas(
    exec: &impl Executor,
    saga_type: &str,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<SagaRecord>, SagaError> {
    let rows = query(
        exec,
        sql::SAGA_LIST_OPEN,
        &[&saga_type, &millis(older_than), &limit],
    )
    .await
    .map_err(db("list open", saga_type, "(all)"))?;
    Ok(rows.iter().map(SagaRecord::from_row).collect())
}

/// Deletes up to `limit` closed records of `saga_type` that completed more than
/// `retention` ago; returns how many. Rows another transaction holds are skipped, so it
/// never waits. The runtime calls it on its own (see the crate docs); a tool may too.
pub async fn purge_closed(
    exec: &impl Executor,
    saga_type: &str,
    retention: Duration,
    limit: i64,
) -> Result<u64, SagaError> {
    execute(
        exec,
        sql::SAGA_PURGE_CLOSED,
        &[&saga_type, &millis(retention), &limit],
    )
    .await
    .map_err(db("purge", saga_type, "(closed)"))
}

/// Locks the saga of `saga_type` with `correlation`, if there is one.
pub(crate) async fn lock_by_correlation(
    exec: &impl Executor,
    saga_type: &str,
    correlation: &str,
) -> Result<Option<Instance>, SagaError> {
    let rows = query(
        exec,
        sql::SAGA_LOCK_BY_CORRELATION,
        &[&saga_type, &correlation],
    )
    .await
    .map_err(db("lock", saga_type, correlation))?;
    Ok(rows.first().map(Instance::from_row))
}

/// Locks saga `id` of `saga_type`, if there is one.
pub(crate) async fn lock_by_id(
    exec: &impl Executor,
    saga_type: &str,
    id: Uuid,
) -> Result<Option<Instance>, SagaError> {
    let rows = query(exec, sql::SAGA_LOCK_BY_ID, &[&id, &saga_type])
        .await
        .map_err(db("lock", saga_type, &id.to_string()))?;
    Ok(rows.first().map(Instance::from_row))
}

/// What a new saga row is made of.
pub(crate) struct NewSaga<'a> {
    pub saga_type: &'a str,
    pub correlation: &'a str,
    pub data: Value,
    pub started_by: &'a str,
    pub originator: Option<&'a str>,
    pub originator_correlation_id: Option<&'a str>,
}

/// Creates the saga, or locks it when its key exists: the row and whether this call
/// created it. `None` when the row this call did not create is not one its snapshot
/// holds: another transaction created it and committed after this call began (perhaps
/// while this one waited for it), or deleted it (a purge) while this call waited for its
/// lock. A second call locks the row, or creates it.
pub(crate) async fn lock_or_create(
    exec: &impl Executor,
    new: &NewSaga<'_>,
) -> Result<Option<(Instance, bool)>, SagaError> {
    let id = Uuid::new_v4();
    let params: [&(dyn ToSql + Sync); 7] = [
        &id,
        &new.saga_type,
        &new.correlation,
        &new.data,
        &new.started_by,
        &new.originator,
        &new.originator_correlation_id,
    ];
    let rows = query(exec, sql::SAGA_LOCK_OR_CREATE, &params)
        .await
        .map_err(db("lock or create", new.saga_type, new.correlation))?;
    Ok(rows
        .first()
        .map(|row| (Instance::from_row(row), row.get(STARTED_COLUMN))))
}

/// Where [`sql::SAGA_LOCK_OR_CREATE`] says whether it created the row: after the step
/// columns.
const STARTED_COLUMN: usize = 7;

/// Saves `data` (closing the saga when `close`) if it is still at `instance.version`.
///
/// The row is locked, so nothing else can have moved the version; the check only guards
/// against a bug. So in a pipelined batch the step does not wait for the answer: the
/// statement then raises the conflict itself, which fails the batch, and the batch is
/// retaken one message at a time, where this runs awaited and returns the conflict.
pub(crate) async fn save(
    tx: &Tx<'_>,
    saga_type: &str,
    instance: &Instance,
    data: Value,
    close: bool,
) -> Result<(), SagaError> {
    // The checked statement's own error names the saga, so the op can stay static.
    let (plain, checked, op, pipelined_op) = if close {
        (
            sql::SAGA_CLOSE,
            sql::SAGA_CLOSE_CHECKED,
            "close",
            "close saga",
        )
    } else {
        (sql::SAGA_SAVE, sql::SAGA_SAVE_CHECKED, "save", "save saga")
    };
    // The key is written out only on failure: this runs once per saga step.
    let failed = |source| SagaError::Database {
        op,
        saga_type: saga_type.to_owned(),
        key: instance.id.to_string(),
        source,
    };
    if tx.is_pipelined() {
        let params: Vec<Param> = vec![
            Box::new(instance.id),
            Box::new(instance.version),
            Box::new(data),
        ];
        return tx
            .execute_unawaited(checked, params, pipelined_op)
            .await
            .map_err(failed);
    }

    let saved = execute(tx, plain, &[&instance.id, &instance.version, &data])
        .await
        .map_err(failed)?;
    if saved != 1 {
        return Err(SagaError::VersionConflict {
            saga_type: saga_type.to_owned(),
            saga_id: instance.id,
            version: instance.version,
        });
    }
    Ok(())
}

async fn query(
    exec: &impl Executor,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, transport_pg::tokio_postgres::Error> {
    let statement = exec.prepare_statement(sql).await?;
    exec.query_statement(&statement, params).await
}

async fn execute(
    exec: &impl Executor,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, transport_pg::tokio_postgres::Error> {
    let statement = exec.prepare_statement(sql).await?;
    exec.execute_statement(&statement, params).await
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn db<'a>(
    op: &'static str,
    saga_type: &'a str,
    key: &'a str,
) -> impl FnOnce(transport_pg::tokio_postgres::Error) -> SagaError + 'a {
    move |source| SagaError::Database {
        op,
        saga_type: saga_type.to_owned(),
        key: key.to_owned(),
        source,
    }
}
