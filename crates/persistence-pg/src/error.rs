//! The crate's one error type, naming the saga type and instance in each variant.

use uuid::Uuid;

/// A failure of the saga runtime or the saga store.
///
/// Display names the saga type and the instance (its id or correlation value); the cause
/// follows through [`std::error::Error::source`]. Inside a saga handler, `?` turns it into
/// a [`HandlerError`](transport_pg::HandlerError) like any other error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// A statement on `bus.sagas` failed.
    #[error("database error during {op} of saga {saga_type} {key}")]
    Database {
        /// What was being done, such as `lock` or `save`.
        op: &'static str,
        /// The saga type.
        saga_type: String,
        /// The instance: its id or its correlation value.
        key: String,
        /// The driver's error.
        #[source]
        source: transport_pg::tokio_postgres::Error,
    },

    /// The stored data does not decode as the saga's data type (a field was renamed or
    /// removed without a serde default). Retrying cannot help.
    #[error("saga {saga_type} {saga_id}: its stored data does not decode as its data type")]
    DecodeData {
        /// The saga type.
        saga_type: String,
        /// The instance.
        saga_id: Uuid,
        /// serde's error, naming the field.
        #[source]
        source: serde_json::Error,
    },

    /// The data could not be written as JSON (a map with non-string keys, for instance).
    #[error("saga {saga_type} {correlation}: its data does not encode as JSON")]
    EncodeData {
        /// The saga type.
        saga_type: String,
        /// The instance's correlation value.
        correlation: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },

    /// A message mapped to an empty correlation value, which can name no saga.
    #[error("message {message_type} maps to an empty correlation value for saga {saga_type}")]
    EmptyCorrelation {
        /// The saga type.
        saga_type: String,
        /// The message's type.
        message_type: String,
    },

    /// A reply to the originator of a saga whose first message carried no `reply_to`
    /// (it came from a standalone sender with no queue).
    #[error("saga {saga_type} {saga_id} has no originator: its first message had no reply_to")]
    NoOriginator {
        /// The saga type.
        saga_type: String,
        /// The instance.
        saga_id: Uuid,
    },

    /// A timeout of a type the saga does not list in [`Saga::messages`](crate::Saga).
    #[error(
        "saga {saga_type} requested timeout {message_type}, which its Saga::messages does \
         not declare, so nothing would handle it"
    )]
    UndeclaredTimeout {
        /// The saga type.
        saga_type: String,
        /// The timeout's message type.
        message_type: String,
    },

    /// A save found the row at another version although it was locked: a bug, or a
    /// hand-made change under the lock.
    #[error("saga {saga_type} {saga_id} is no longer at version {version} or no longer open")]
    VersionConflict {
        /// The saga type.
        saga_type: String,
        /// The instance.
        saga_id: Uuid,
        /// The version it was loaded at.
        version: i64,
    },

    /// The lock-or-create step found no row after inserting lost to another transaction
    /// several times (the winner's row kept disappearing, e.g. a purge running at once).
    #[error("saga {saga_type} {correlation}: no row to lock after {attempts} attempts")]
    LockOrCreate {
        /// The saga type.
        saga_type: String,
        /// The correlation value.
        correlation: String,
        /// How many times it tried.
        attempts: u32,
    },

    /// Deleting a completing saga's pending timeouts failed.
    #[error("saga {saga_type} {saga_id}: could not delete its pending timeouts")]
    CancelTimeouts {
        /// The saga type.
        saga_type: String,
        /// The instance.
        saga_id: Uuid,
        /// The transport's error.
        #[source]
        source: Box<transport_pg::Error>,
    },

    /// A send, publish, reply or timeout request from a saga failed.
    #[error("saga {saga_type} {saga_id} could not {action} {message_type}")]
    Outgoing {
        /// The saga type.
        saga_type: String,
        /// The instance.
        saga_id: Uuid,
        /// `send`, `publish`, `reply to` or `request timeout`.
        action: &'static str,
        /// The outgoing message's type.
        message_type: String,
        /// The transport's error.
        #[source]
        source: Box<transport_pg::Error>,
    },
}

impl SagaError {
    /// Whether trying again can never succeed, so the message should skip its retries.
    pub fn is_permanent(&self) -> bool {
        match self {
            SagaError::DecodeData { .. }
            | SagaError::EncodeData { .. }
            | SagaError::EmptyCorrelation { .. }
            | SagaError::NoOriginator { .. }
            | SagaError::UndeclaredTimeout { .. } => true,
            // As for any handler's send: retried, since an endpoint may be installed
            // meanwhile; the retry policy bounds it.
            SagaError::Outgoing { .. }
            | SagaError::CancelTimeouts { .. }
            | SagaError::Database { .. }
            | SagaError::VersionConflict { .. }
            | SagaError::LockOrCreate { .. } => false,
        }
    }

    /// The handler failure this error makes, marked permanent when retrying cannot help
    /// (the blanket `?` conversion cannot look at the variant, so it never is).
    pub fn into_handler_error(self) -> transport_pg::HandlerError {
        let permanent = self.is_permanent();
        let failure = transport_pg::HandlerError::from(self);
        if permanent {
            failure.permanent()
        } else {
            failure
        }
    }

    /// The server's SQLSTATE code when the failure came from PostgreSQL.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            SagaError::Database { source, .. } => source.code().map(|c| c.code()),
            SagaError::Outgoing { source, .. } | SagaError::CancelTimeouts { source, .. } => {
                source.sqlstate()
            }
            _ => None,
        }
    }
}
