//! The per-endpoint installer: the queue and delayed tables and the registry row.
//!
//! It runs at every start-up of every instance, so the common case, everything already
//! there at the current version, is one catalog query and no lock. Otherwise it takes an
//! advisory lock for the endpoint (with a `lock_timeout`, so a stuck DDL elsewhere is an
//! error, not a hang), looks again, and runs idempotent DDL.

use tokio_postgres::Client;
use tracing::info;

use crate::error::{Error, Result};
use crate::name::EndpointName;
use crate::sql;

/// The installer's version, recorded in `bus.endpoints`. Raise it when the DDL changes,
/// and keep every statement idempotent so that raising it upgrades older tables.
pub const INSTALLER_VERSION: i32 = 1;

/// What the installer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallOutcome {
    /// The tables were there at the current version; nothing changed.
    AlreadyInstalled,
    /// Tables were created or upgraded.
    Installed,
}

/// Makes sure `name`'s tables exist at [`INSTALLER_VERSION`].
pub async fn install_endpoint(client: &mut Client, name: &EndpointName) -> Result<InstallOutcome> {
    if is_current(client, name).await? {
        return Ok(InstallOutcome::AlreadyInstalled);
    }

    let tx = client
        .transaction()
        .await
        .map_err(Error::db("install: begin"))?;
    tx.batch_execute("SET LOCAL lock_timeout = '10s'")
        .await
        .map_err(Error::db("install: set lock_timeout"))?;
    tx.execute(sql::INSTALL_LOCK, &[&name.as_str()])
        .await
        .map_err(|source| install_error(name, source))?;

    // Another instance may have finished while we waited for the lock.
    if is_current(&tx, name).await? {
        tx.rollback()
            .await
            .map_err(Error::db("install: rollback"))?;
        return Ok(InstallOutcome::AlreadyInstalled);
    }

    let tables = name.tables();
    tx.batch_execute(&sql::install_ddl(name, &tables))
        .await
        .map_err(|source| install_error(name, source))?;
    tx.execute(sql::ENDPOINT_UPSERT, &[&name.as_str(), &INSTALLER_VERSION])
        .await
        .map_err(|source| install_error(name, source))?;
    tx.commit()
        .await
        .map_err(|source| install_error(name, source))?;

    info!(endpoint = %name, version = INSTALLER_VERSION, "installed endpoint tables");
    Ok(InstallOutcome::Installed)
}

async fn is_current(
    client: &impl tokio_postgres::GenericClient,
    name: &EndpointName,
) -> Result<bool> {
    let tables = name.tables();
    let row = client
        .query_one(
            sql::INSTALL_CHECK,
            &[&name.as_str(), &tables.queue_bare, &tables.delayed_bare],
        )
        .await
        .map_err(Error::db(format!("install check for {name}")))?;
    let version: Option<i32> = row.get(0);
    let tables_exist: bool = row.get(1);
    Ok(tables_exist && version.is_some_and(|v| v >= INSTALLER_VERSION))
}

fn install_error(name: &EndpointName, source: tokio_postgres::Error) -> Error {
    if source.code().map(|c| c.code()) == Some("55P03") {
        return Error::LockTimeout {
            what: "endpoint installer",
            waited: std::time::Duration::from_secs(10),
        };
    }
    Error::Database {
        op: format!("install endpoint {name}"),
        source,
    }
}
