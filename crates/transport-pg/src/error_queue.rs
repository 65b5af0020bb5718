//! The error queue, `bus.failed_messages`: moving a message in, with its reason.
//!
//! A message lands here when it can never be handled (unreadable headers, a body that
//! does not decode, a type nobody handles) or when its retries are used up. It keeps the
//! original headers and body, so a retry can put it back exactly as it was.

use std::time::SystemTime;

use serde_json::Value;
use tracing::error;
use uuid::Uuid;

use crate::envelope::{Headers, format_rfc3339, header};
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::failure::{HandlerError, fingerprint};
use crate::name::EndpointName;
use crate::sql::error_queue::FAILED_INSERT;

/// Why a message was moved to the error queue.
#[derive(Debug, Clone)]
pub(crate) struct FailureDetails {
    pub kind: String,
    pub message: String,
    pub source: String,
    pub fingerprint: String,
}

impl FailureDetails {
    /// A message that can never be handled, such as one whose body does not decode.
    pub fn poison(message_type: Option<&str>, kind: &str, reason: String) -> Self {
        FailureDetails {
            fingerprint: fingerprint(message_type.unwrap_or(""), kind, &reason, None),
            kind: kind.to_owned(),
            message: reason,
            source: String::new(),
        }
    }

    /// A handler's failure.
    pub fn from_handler(message_type: &str, failure: &HandlerError) -> Self {
        let mut source = failure.source_chain();
        if let Some(location) = failure.location() {
            if !source.is_empty() {
                source.push('\n');
            }
            source.push_str("at ");
            source.push_str(location);
        }
        FailureDetails {
            kind: failure.kind().to_owned(),
            message: failure.message().to_owned(),
            source,
            fingerprint: failure.fingerprint(message_type),
        }
    }
}

/// The message as it came out of its queue.
pub(crate) struct FailedMessage<'a> {
    pub message_id: Uuid,
    pub message_type: Option<&'a str>,
    /// The parsed headers, or `None` when they could not be read.
    pub headers: Option<&'a Headers>,
    pub raw_headers: &'a Value,
    pub body: &'a [u8],
    pub enqueued_at: Option<SystemTime>,
}

/// Inserts `message` into the error queue inside the caller's transaction.
pub(crate) async fn move_to_error_queue(
    exec: &impl Executor,
    origin: &EndpointName,
    message: &FailedMessage<'_>,
    details: &FailureDetails,
) -> Result<()> {
    let (headers_json, failed_attempts, delayed_retries) = match message.headers {
        Some(headers) => {
            let mut headers = headers.clone();
            headers.insert(header::ERROR_KIND, details.kind.as_str());
            headers.insert(header::ERROR_MESSAGE, details.message.as_str());
            headers.insert(header::ERROR_SOURCE, details.source.as_str());
            headers.insert(header::FAILED_QUEUE, origin.as_str());
            headers.insert(header::FAILED_AT, format_rfc3339(SystemTime::now()));
            let failed = headers.counter(header::FAILED_ATTEMPTS) as i32;
            let delayed = headers.counter(header::DELAYED_RETRIES) as i32;
            (headers.to_json(), failed, delayed)
        }
        None => (message.raw_headers.clone(), 0, 0),
    };

    // Text columns cannot hold NUL either.
    let clean = |s: &str| s.replace('\0', "\u{FFFD}");
    exec.execute_cached(
        FAILED_INSERT,
        &[
            &message.message_id,
            &origin.as_str(),
            &message.message_type.map(clean),
            &headers_json,
            &message.body,
            &message.enqueued_at,
            &clean(&details.kind),
            &clean(&details.message),
            &clean(&details.source),
            &details.fingerprint,
            &failed_attempts,
            &delayed_retries,
        ],
    )
    .await
    .map_err(Error::db(format!("move to error queue from {origin}")))?;

    error!(
        endpoint = %origin,
        message_id = %message.message_id,
        message_type = message.message_type.unwrap_or("?"),
        error_kind = %details.kind,
        error = %details.message,
        fingerprint = %details.fingerprint,
        "message moved to the error queue"
    );
    Ok(())
}
