//! The CLI's one error type and the exit code each kind of failure maps to.
//!
//! Usage errors exit 2 (as clap's own do), a runtime failure 1, something named that does
//! not exist 3, and an action that was not confirmed 4. `main` prints the chain on one line.

use transport_pg::tokio_postgres;

/// A usage error: a bad flag or value, as clap reports them, or a missing database URL.
pub const EXIT_USAGE: u8 = 2;
/// A failure at run time: the database, a query, a retry that could not be delivered.
pub const EXIT_RUNTIME: u8 = 1;
/// An endpoint, queue, error-queue id, fingerprint or saga that does not exist.
pub const EXIT_NOT_FOUND: u8 = 3;
/// A destructive action that was declined, or asked for without a terminal and no `--yes`.
pub const EXIT_NOT_CONFIRMED: u8 = 4;

/// What went wrong in a command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A transport operation failed (connecting, migrating, retrying, unsubscribing).
    #[error(transparent)]
    Bus(#[from] transport_pg::Error),

    /// A saga look-up failed.
    #[error(transparent)]
    Saga(#[from] persistence_pg::SagaError),

    /// A statement of the CLI's own failed.
    #[error("database error during {op}")]
    Database {
        /// What the statement was for.
        op: String,
        /// The driver's error, with the server's message as its source.
        #[source]
        source: tokio_postgres::Error,
    },

    /// Something the operator named does not exist.
    #[error("{0}")]
    NotFound(String),

    /// A destructive action that did not get its confirmation.
    #[error("{0}")]
    NotConfirmed(String),

    /// Part of the work was done and part could not be (exit 1); the text says which.
    #[error("{0}")]
    Incomplete(String),

    /// The confirmation could not be read.
    #[error("could not read the confirmation from the terminal")]
    Prompt(#[source] std::io::Error),

    /// Standard output could not be written (other than a closed pipe).
    #[error("could not write to standard output")]
    Output(#[source] std::io::Error),
}

impl CliError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::NotFound(_) => EXIT_NOT_FOUND,
            CliError::NotConfirmed(_) => EXIT_NOT_CONFIRMED,
            CliError::Bus(transport_pg::Error::InvalidEndpointName { .. })
            | CliError::Bus(transport_pg::Error::InvalidTypeName { .. })
            | CliError::Bus(transport_pg::Error::Config(_)) => EXIT_USAGE,
            _ => EXIT_RUNTIME,
        }
    }

    /// A hint for the operator when the failure has a likely cause they can fix.
    pub fn hint(&self) -> Option<&'static str> {
        let code = match self {
            CliError::Bus(error) => error.sqlstate(),
            CliError::Saga(error) => error.sqlstate(),
            CliError::Database { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        };
        match code {
            // undefined_table, invalid_schema_name: the bus schema was never migrated.
            Some("42P01") | Some("3F000") => {
                Some("is the bus schema installed in this database? run `pgbus migrate`")
            }
            _ => None,
        }
    }
}

/// Wraps a driver error with the operation it failed in.
pub fn db(op: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> CliError {
    let op = op.into();
    move |source| CliError::Database { op, source }
}

/// Shorthand for results of this crate.
pub type Result<T, E = CliError> = std::result::Result<T, E>;
