-- Publish/subscribe: which endpoints receive a copy of each event type. A publisher reads
-- this table (through a short-lived cache) and inserts one copy per subscriber in its own
-- transaction. Removing an endpoint from the registry removes its subscriptions with it,
-- so a decommissioned endpoint can never stall its publishers.
CREATE TABLE bus.subscriptions (
    message_type  text        NOT NULL,
    endpoint      text        NOT NULL REFERENCES bus.endpoints (name) ON DELETE CASCADE,
    subscribed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_type, endpoint)
);

-- Listing an endpoint's subscriptions (pgbus endpoints, decommission).
CREATE INDEX subscriptions_endpoint_idx ON bus.subscriptions (endpoint);
