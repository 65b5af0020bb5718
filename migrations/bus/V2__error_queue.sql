-- The error queue: one table for every endpoint, the origin queue a column, so an
-- operator sees all failures in one place. Its own id is what operators name.
CREATE TABLE bus.failed_messages (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id      uuid        NOT NULL,
    -- The endpoint whose queue the message failed in, and where a retry sends it.
    origin_queue    text        NOT NULL,
    -- NULL when the headers could not be read.
    message_type    text,
    -- The original headers plus the failure headers; the raw value when unreadable.
    headers         jsonb       NOT NULL,
    body            bytea       NOT NULL,
    enqueued_at     timestamptz,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    error_kind      text        NOT NULL,
    error_message   text        NOT NULL,
    error_source    text        NOT NULL DEFAULT '',
    -- Groups failures of one cause: type, error kind, normalized message, panic site.
    fingerprint     text        NOT NULL,
    failed_attempts integer     NOT NULL DEFAULT 0,
    delayed_retries integer     NOT NULL DEFAULT 0
);

-- Listing by queue and grouping by cause are what operators do most.
CREATE INDEX failed_messages_origin_idx ON bus.failed_messages (origin_queue, id);
CREATE INDEX failed_messages_fingerprint_idx ON bus.failed_messages (fingerprint, id);
