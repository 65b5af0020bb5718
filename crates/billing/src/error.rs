//! Why a Billing handler failed, and which failures no retry can fix.
//!
//! A declined card is not here: it is an answer, published as PaymentFailed. A pending
//! charge, a timeout or a 5xx is retryable, because the idempotency key makes the next
//! attempt get the first one's result; a request the provider rejects as malformed, or a
//! refund with nothing to refund, is permanent and goes to the error queue at once.

use gateways::client::ClientError;
use transport_pg::{HandlerError, tokio_postgres};

/// A Billing handler's failure.
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

    /// The provider is still working on the key's first request (a slow charge).
    #[error("the {operation} for order {order_id} is still pending at the provider")]
    Pending {
        /// `charge` or `refund`.
        operation: &'static str,
        /// The order concerned.
        order_id: String,
    },

    /// No definite answer: a timeout, a broken connection or a 5xx.
    #[error("no answer from the provider for the {operation} of order {order_id}")]
    NoAnswer {
        /// `charge` or `refund`.
        operation: &'static str,
        /// The order concerned.
        order_id: String,
        /// The client's error.
        #[source]
        source: ClientError,
    },

    /// The provider refused the request itself (400 or 422).
    #[error("the provider rejected the {operation} for order {order_id} with {status}: {reason}")]
    Rejected {
        /// `charge` or `refund`.
        operation: &'static str,
        /// The order concerned.
        order_id: String,
        /// The HTTP status.
        status: u16,
        /// The provider's reason.
        reason: String,
    },

    /// A success without the field it must carry.
    #[error("the provider's {operation} answer for order {order_id} has no {field}")]
    BadReply {
        /// `charge` or `refund`.
        operation: &'static str,
        /// The order concerned.
        order_id: String,
        /// The missing field.
        field: &'static str,
    },

    /// A refund for an order Billing holds no charge for.
    #[error("cannot refund order {order_id}: {why}")]
    NothingToRefund {
        /// The order concerned.
        order_id: String,
        /// What Billing knows instead.
        why: String,
    },

    /// The provider declined a refund (nothing left to refund, another charge named).
    #[error("the provider declined the refund for order {order_id}: {reason}")]
    RefundDeclined {
        /// The order concerned.
        order_id: String,
        /// The provider's reason.
        reason: String,
    },

    /// `billing.payments` holds a row this release cannot read.
    #[error("the payment of order {order_id} is unreadable: {reason}")]
    Corrupt {
        /// The order concerned.
        order_id: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An event could not be published.
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
        match self {
            Error::NoAnswer { source, .. } => !source.is_retryable(),
            Error::Rejected { .. }
            | Error::BadReply { .. }
            | Error::NothingToRefund { .. }
            | Error::RefundDeclined { .. }
            | Error::Corrupt { .. } => true,
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
