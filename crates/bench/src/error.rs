//! The bench's one error type: what step failed, and the value it was working on.

use std::path::PathBuf;

/// A step of the bench that could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or combination of flags that cannot be run.
    #[error("bad configuration: {0}")]
    Config(String),

    /// A statement of the bench's own set-up or measuring failed.
    #[error("database error during {op}")]
    Database {
        /// What the bench was doing.
        op: String,
        /// The driver's error.
        #[source]
        source: transport_pg::tokio_postgres::Error,
    },

    /// The transport refused something (an endpoint start, a send).
    #[error("transport error during {op}")]
    Transport {
        /// What the bench was doing.
        op: String,
        /// The transport's error.
        #[source]
        source: transport_pg::Error,
    },

    /// A child process (pgbench, an endpoint binary) could not be started or failed.
    #[error("{program} failed: {reason}")]
    Process {
        /// The program.
        program: String,
        /// What went wrong, with the tail of its output where there is one.
        reason: String,
    },

    /// A file could not be read or written.
    #[error("cannot {op} {path}")]
    Io {
        /// Read, write, create.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },

    /// Something that should have happened within a bound did not.
    #[error("timed out: {0}")]
    Timeout(String),

    /// pgmq was not installed as expected.
    #[error("pgmq is not installed properly: {0}")]
    Pgmq(String),
}

/// The bench's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A mapper for database errors of operation `op`.
    pub fn db(op: impl Into<String>) -> impl FnOnce(transport_pg::tokio_postgres::Error) -> Error {
        let op = op.into();
        move |source| Error::Database { op, source }
    }

    /// A mapper for transport errors of operation `op`.
    pub fn transport(op: impl Into<String>) -> impl FnOnce(transport_pg::Error) -> Error {
        let op = op.into();
        move |source| Error::Transport { op, source }
    }

    /// A mapper for IO errors on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}
