//! The client's one error type.

use transport_pg::tokio_postgres;

/// Why a client command could not do its work. (An invariant that does not hold is not
/// an error: it is a result, see [`crate::verify::Report`].)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A flag or argument that cannot work.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The tables this command reads are not there.
    #[error("table {table} does not exist: run `retail migrate` first")]
    NotMigrated {
        /// The first missing table.
        table: &'static str,
    },

    /// Neither the client nor Sales knows the order.
    #[error("order {order_id:?} is unknown: the client never placed it and Sales has no record")]
    UnknownOrder {
        /// The order id asked about.
        order_id: String,
    },

    /// A statement failed.
    #[error("database error during {op}")]
    Database {
        /// What was being done.
        op: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// The transport failed: connecting, migrating, or sending a PlaceOrder.
    #[error(transparent)]
    Transport(#[from] transport_pg::Error),
}

impl Error {
    pub(crate) fn db(op: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let op = op.into();
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
