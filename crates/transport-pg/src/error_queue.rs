//! The error queue, `bus.failed_messages`: moving a message in, with its reason.
//!
//! A message lands here when it can never be handled (unreadable headers, a body that
//! does not decode, a type nobody handles) or when its retries are used up. It keeps the
//! original headers and body, so a retry can put it back exactly as it was.

use std::time::SystemTime;

use serde_json::Value;
use tracing::{error, info};
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

/// Which messages of the error queue an operation takes.
#[derive(Debug, Clone)]
pub enum FailedSelection {
    /// These ids.
    Ids(Vec<i64>),
    /// Every message whose failure has this fingerprint.
    Fingerprint(String),
    /// Every message, or every message of one origin queue.
    All {
        /// The origin queue (endpoint name), or every queue.
        queue: Option<String>,
    },
}

impl FailedSelection {
    /// The SQL condition and its one bind parameter, `$1`.
    fn condition(
        &self,
    ) -> (
        &'static str,
        Box<dyn tokio_postgres::types::ToSql + Sync + Send>,
    ) {
        match self {
            FailedSelection::Ids(ids) => ("id = ANY($1)", Box::new(ids.clone())),
            FailedSelection::Fingerprint(f) => ("fingerprint = $1", Box::new(f.clone())),
            FailedSelection::All { queue } => (
                "($1::text IS NULL OR origin_queue = $1)",
                Box::new(queue.clone()),
            ),
        }
    }
}

/// What a retry moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryReport {
    /// The error-queue ids moved back, with the queue each went to.
    pub moved: Vec<(i64, String)>,
    /// Ids asked for by [`FailedSelection::Ids`] that were not in the error queue.
    pub missing: Vec<i64>,
}

/// Moves the selected messages from the error queue back to their origin queues, with
/// their failure headers and retry counters removed, `batch` at a time. Each batch is one
/// transaction, so a message is never in both places or in neither; SKIP LOCKED lets two
/// retries run at once without moving a message twice. An origin endpoint that is no
/// longer installed stops the retry with [`Error::EndpointNotInstalled`], the batch left
/// in the error queue.
pub async fn retry_failed(
    client: &mut tokio_postgres::Client,
    selection: &FailedSelection,
    batch: i64,
) -> Result<RetryReport> {
    let (condition, param) = selection.condition();
    let take = format!(
        "\
DELETE FROM bus.failed_messages
WHERE id = ANY(ARRAY(
    SELECT id
    FROM bus.failed_messages
    WHERE {condition}
    ORDER BY id
    LIMIT $2
    FOR UPDATE SKIP LOCKED))
RETURNING id, origin_queue, message_id, headers, body"
    );
    let mut report = RetryReport::default();

    loop {
        let tx = client
            .transaction()
            .await
            .map_err(Error::db("retry: begin"))?;
        let rows = tx
            .query(&take, &[param.as_ref(), &batch.max(1)])
            .await
            .map_err(Error::db("retry: take from the error queue"))?;
        if rows.is_empty() {
            tx.rollback().await.map_err(Error::db("retry: rollback"))?;
            break;
        }

        // Group by origin, one insert per queue.
        let mut groups: Vec<(String, Vec<RetriedRow>)> = Vec::new();
        for row in &rows {
            let id: i64 = row.get(0);
            let origin: String = row.get(1);
            let headers = clean_for_retry(row.get(3));
            let entry = (row.get::<_, Uuid>(2), headers, row.get::<_, Vec<u8>>(4));
            match groups.iter_mut().find(|(o, _)| *o == origin) {
                Some((_, group)) => group.push(entry),
                None => groups.push((origin.clone(), vec![entry])),
            }
            report.moved.push((id, origin));
        }
        for (origin, group) in &groups {
            let destination = EndpointName::new(origin)?;
            let ids: Vec<Uuid> = group.iter().map(|g| g.0).collect();
            let headers: Vec<&Value> = group.iter().map(|g| &g.1).collect();
            let bodies: Vec<&[u8]> = group.iter().map(|g| g.2.as_slice()).collect();
            tx.execute(
                &crate::sql::queue::insert(&destination.tables().queue),
                &[&ids, &headers, &bodies],
            )
            .await
            .map_err(|source| crate::send::send_error(&destination, source))?;
        }
        tx.commit().await.map_err(Error::db("retry: commit"))?;

        for (origin, group) in &groups {
            info!(origin_queue = %origin, messages = group.len(), "retried from the error queue");
            let channel = crate::wakeup::channel(&EndpointName::new(origin)?);
            let _ = client
                .execute("SELECT pg_notify($1, '')", &[&channel])
                .await;
        }
        if matches!(selection, FailedSelection::Ids(_)) {
            break;
        }
    }

    if let FailedSelection::Ids(ids) = selection {
        report.missing = ids
            .iter()
            .filter(|id| !report.moved.iter().any(|(m, _)| m == *id))
            .copied()
            .collect();
    }
    Ok(report)
}

/// A message on its way back: id, cleaned headers, body.
type RetriedRow = (Uuid, Value, Vec<u8>);

/// The original headers, without what the failure and the retries added.
fn clean_for_retry(headers: Value) -> Value {
    match headers {
        Value::Object(mut map) => {
            for name in header::FAILURE_HEADERS {
                map.remove(name);
            }
            map.remove(header::FAILED_ATTEMPTS);
            map.remove(header::DELAYED_RETRIES);
            Value::Object(map)
        }
        // Unreadable headers go back as they were; they will fail the same way.
        other => other,
    }
}
