//! Why a Sales handler failed, and which failures no retry can fix.

use transport_pg::{HandlerError, tokio_postgres};

/// A Sales handler's failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A statement failed; the message is retried.
    #[error("database error during {op} for order {order_id}")]
    Database {
        /// What was being done.
        op: &'static str,
        /// The order concerned.
        order_id: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// A message names an order Sales never stored. Every message of the flow comes from
    /// an order Sales stored first, so this needs an operator, not a retry.
    #[error("order {order_id} is unknown to Sales")]
    UnknownOrder {
        /// The order named.
        order_id: String,
    },

    /// `sales.orders` holds a status this release does not know.
    #[error("order {order_id} has status {status:?}, which this release does not know")]
    UnknownStatus {
        /// The order concerned.
        order_id: String,
        /// What the table says.
        status: String,
    },

    /// A message could not be published.
    #[error("cannot publish {message_type} for order {order_id}")]
    Publish {
        /// The event's type.
        message_type: &'static str,
        /// The order concerned.
        order_id: String,
        /// The transport's error.
        #[source]
        source: transport_pg::Error,
    },
}

impl Error {
    /// Whether no retry can make the message succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::UnknownOrder { .. } | Error::UnknownStatus { .. }
        )
    }

    /// The handler error the host records, permanent when [`is_permanent`](Self::is_permanent).
    pub fn into_handler_error(self) -> HandlerError {
        let permanent = self.is_permanent();
        let error = HandlerError::from(self);
        if permanent { error.permanent() } else { error }
    }

    pub(crate) fn db(
        op: &'static str,
        order_id: &str,
    ) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let order_id = order_id.to_owned();
        move |source| Error::Database {
            op,
            order_id,
            source,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
