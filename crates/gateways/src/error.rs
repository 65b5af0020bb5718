//! The gateways' one error type.

use transport_pg::tokio_postgres;

/// A failure of the gateways' own machinery (never a declined card: that is an answer).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A ledger statement failed.
    #[error("database error during {op}")]
    Database {
        /// What was being done.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// The ledger holds something this release cannot read.
    #[error("ledger is inconsistent: {reason}")]
    Corrupt {
        /// What was wrong.
        reason: String,
    },

    /// Connecting, migrating or the pool failed.
    #[error(transparent)]
    Transport(#[from] transport_pg::Error),

    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },

    /// The HTTP server stopped with an error.
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),

    /// The retail migrations failed.
    #[error(transparent)]
    Migrate(#[from] retail::Error),
}

impl Error {
    pub(crate) fn db(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
        move |source| Error::Database { op, source }
    }
}

impl From<transport_pg::deadpool_postgres::PoolError> for Error {
    fn from(source: transport_pg::deadpool_postgres::PoolError) -> Self {
        Error::Transport(source.into())
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
