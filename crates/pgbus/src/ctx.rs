//! What every command shares: the database and output mode, and the look-ups that turn
//! an endpoint name the operator typed into a usage error or a "not found".

use transport_pg::tokio_postgres::Client;
use transport_pg::{Database, EndpointName};

use crate::error::{self, CliError, Result};
use crate::sql;

/// What every command gets: the database and the output mode.
pub struct Ctx {
    db: Database,
    /// Print JSON instead of tables.
    pub json: bool,
}

impl Ctx {
    /// The context of one command.
    pub fn new(db: Database, json: bool) -> Ctx {
        Ctx { db, json }
    }

    /// The database the command works on.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// A connection of the command's own, outside any pool.
    pub async fn client(&self) -> Result<Client> {
        Ok(self.db.connect("cli").await?)
    }
}

/// Parses an endpoint name for clap, so a bad one is a usage error (exit 2).
pub fn parse_endpoint(name: &str) -> Result<EndpointName, String> {
    EndpointName::new(name).map_err(|e| e.to_string())
}

/// Whether `endpoint` is in the registry, `bus.endpoints`.
pub async fn is_registered(client: &Client, endpoint: &EndpointName) -> Result<bool> {
    Ok(client
        .query_one(sql::ENDPOINT_EXISTS, &[&endpoint.as_str()])
        .await
        .map_err(error::db(format!("look up endpoint {endpoint}")))?
        .get(0))
}

/// Fails with [`CliError::NotFound`] unless `endpoint` is in the registry.
pub async fn require_endpoint(client: &Client, endpoint: &EndpointName) -> Result<()> {
    if is_registered(client, endpoint).await? {
        Ok(())
    } else {
        Err(CliError::NotFound(format!(
            "endpoint {endpoint} is not installed (see `pgbus endpoints`)"
        )))
    }
}
