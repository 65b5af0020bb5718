//! Statements on `bus.failed_messages`, the error queue shared by every endpoint.

/// Moves one message into the error queue with its failure's details.
pub const FAILED_INSERT: &str = "\
INSERT INTO bus.failed_messages (
    message_id, origin_queue, message_type, headers, body, enqueued_at,
    error_kind, error_message, error_source, fingerprint, failed_attempts, delayed_retries)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
