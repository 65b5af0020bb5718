//! The crate's one error type, with the operation and key value in each variant.

use std::time::Duration;

/// A failure of the transport: a bad name or configuration, a message that cannot be
/// sent, or a database operation that failed.
///
/// Display names what was being done and the value involved; the cause follows through
/// [`std::error::Error::source`], so print the whole chain (`{:#}` with anyhow-like
/// reporters, or walk `source()`) to see the database's own message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An endpoint name that is not a lower-case SQL identifier of at most 40 bytes.
    #[error("invalid endpoint name {name:?}: {reason}")]
    InvalidEndpointName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A message type name that is not `<contract>.<Type>`.
    #[error("invalid message type name {name:?}: expected <contract>.<Type>")]
    InvalidTypeName {
        /// The name as given.
        name: String,
    },

    /// A send to an endpoint whose queue table does not exist.
    #[error("endpoint {endpoint:?} is not installed: table bus.{endpoint}_queue does not exist")]
    EndpointNotInstalled {
        /// The destination that was named.
        endpoint: String,
    },

    /// A command with no entry in the routing table.
    #[error("no route for command {message_type}: add it to the routing table")]
    NoRoute {
        /// The command's type name.
        message_type: String,
    },

    /// A message whose encoded body is over the configured limit.
    #[error("message {message_type} is {size} bytes, over the limit of {limit} bytes")]
    MessageTooLarge {
        /// The message's type name.
        message_type: String,
        /// Its encoded size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// A message that could not be encoded as MessagePack.
    #[error("could not encode message {message_type}")]
    Encode {
        /// The message's type name.
        message_type: String,
        /// What the encoder said.
        #[source]
        source: rmp_serde::encode::Error,
    },

    /// A statement that failed.
    #[error("database error during {op}")]
    Database {
        /// The operation, such as `receive` or `send to billing`.
        op: String,
        /// The driver's error; its source is the server's message when there is one.
        #[source]
        source: tokio_postgres::Error,
    },

    /// No connection could be had from the pool in time, or one could not be made.
    #[error("could not get a database connection from the pool")]
    Pool {
        /// The pool's error.
        #[source]
        source: deadpool_postgres::PoolError,
    },

    /// A connection made outside the pool (listener, migrations) could not be opened.
    #[error("could not connect to the database for {purpose}")]
    Connect {
        /// What the connection was for.
        purpose: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// A schema migration failed.
    #[error("migration of the {set} schema failed")]
    Migration {
        /// The migration set, such as `bus`.
        set: &'static str,
        /// refinery's error.
        #[source]
        source: refinery::Error,
    },

    /// A lock the installer or migrator needed was not granted in time.
    #[error("timed out after {waited:?} waiting for the {what} lock")]
    LockTimeout {
        /// Which lock.
        what: &'static str,
        /// How long it waited.
        waited: Duration,
    },

    /// A configuration value that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// The server's SQLSTATE code when the failure came from PostgreSQL.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Database { source, .. } | Error::Connect { source, .. } => {
                source.code().map(|code| code.code())
            }
            _ => None,
        }
    }

    /// Whether trying the same thing again may succeed: a serialization failure, a
    /// deadlock, a lock or statement timeout, or a lost connection.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Database { source, .. } | Error::Connect { source, .. } => {
                is_retryable_pg(source)
            }
            Error::Pool { .. } | Error::LockTimeout { .. } => true,
            _ => false,
        }
    }

    /// Whether the failure means the database could not be reached or the connection was
    /// lost (as opposed to a statement the server refused): what an outage is made of.
    pub fn is_connection_problem(&self) -> bool {
        match self {
            Error::Pool { .. } | Error::Connect { .. } => true,
            Error::Database { source, .. } => {
                source.is_closed()
                    || match source.code() {
                        None => true,
                        Some(code) => {
                            let code = code.code();
                            code.starts_with("08") || code.starts_with("57P")
                        }
                    }
            }
            _ => false,
        }
    }

    pub(crate) fn db(op: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let op = op.into();
        move |source| Error::Database { op, source }
    }
}

/// Whether a driver error is worth another try: the connection went away, or the server
/// refused for a reason that passes (serialization, deadlock, lock or query timeout,
/// shutdown, too many connections).
pub(crate) fn is_retryable_pg(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        // No SQLSTATE means the failure was in the connection, not in the statement.
        None => true,
        Some(code) => {
            let code = code.code();
            matches!(code, "40001" | "40P01" | "55P03" | "57014" | "53300")
                || code.starts_with("08")
                || code.starts_with("57P")
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(source: deadpool_postgres::PoolError) -> Self {
        Error::Pool { source }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `error` and its causes on one line, `outer: inner: innermost`, for logs.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        let part = source.to_string();
        // tokio-postgres repeats its cause in its own Display ("db error: ...").
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = source.source();
    }
    text
}
