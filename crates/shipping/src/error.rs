//! Why the ShipOrder handler failed, and which failures no retry can fix.
//!
//! A pending booking, a timeout or a 5xx is retryable: the idempotency key makes the next
//! attempt get the first one's booking. A request the courier rejects, or refuses, needs
//! an operator and goes to the error queue at once.

use gateways::client::ClientError;
use transport_pg::{HandlerError, tokio_postgres};

/// The ShipOrder handler's failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A statement failed.
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

    /// The courier is still working on the key's first request.
    #[error("the booking for order {order_id} is still pending at the courier")]
    Pending {
        /// The order concerned.
        order_id: String,
    },

    /// No definite answer: a timeout, a broken connection or a 5xx.
    #[error("no answer from the courier for order {order_id}")]
    NoAnswer {
        /// The order concerned.
        order_id: String,
        /// The client's error.
        #[source]
        source: ClientError,
    },

    /// The courier refused the booking, or the request itself (400, 402, 422).
    #[error("the courier refused the booking for order {order_id} with {status}: {reason}")]
    Refused {
        /// The order concerned.
        order_id: String,
        /// The HTTP status.
        status: u16,
        /// The courier's reason.
        reason: String,
    },

    /// A booking without a tracking number.
    #[error("the courier booked order {order_id} without a tracking number")]
    BadReply {
        /// The order concerned.
        order_id: String,
    },

    /// OrderShipped could not be published.
    #[error("cannot publish retail.OrderShipped for order {order_id}")]
    Publish {
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
        match self {
            Error::NoAnswer { source, .. } => !source.is_retryable(),
            Error::Refused { .. } | Error::BadReply { .. } => true,
            Error::Database { .. } | Error::Pending { .. } | Error::Publish { .. } => false,
        }
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
