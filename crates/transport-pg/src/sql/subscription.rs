//! Statements on `bus.subscriptions`.

/// Subscribes endpoint `$2` to event type `$1`; a repeat is a no-op.
pub const SUBSCRIPTION_UPSERT: &str = "\
INSERT INTO bus.subscriptions (message_type, endpoint)
VALUES ($1, $2)
ON CONFLICT (message_type, endpoint) DO NOTHING";

/// The subscribers of event type `$1` that are installed and still have a queue table,
/// so a subscription left behind by a half-removed endpoint is skipped, not failed on.
pub const SUBSCRIPTION_LIST_FOR_TYPE: &str = "\
SELECT s.endpoint
FROM bus.subscriptions s
JOIN bus.endpoints e ON e.name = s.endpoint
WHERE s.message_type = $1
  AND to_regclass('bus.' || quote_ident(s.endpoint || '_queue')) IS NOT NULL
ORDER BY s.endpoint";

/// Removes endpoint `$1`'s subscription to type `$2`, or to every type when `$2` is NULL.
pub const SUBSCRIPTION_DELETE: &str = "\
DELETE FROM bus.subscriptions
WHERE endpoint = $1
  AND ($2::text IS NULL OR message_type = $2)";

/// Every subscription, for operators.
pub const SUBSCRIPTION_LIST_ALL: &str = "\
SELECT message_type, endpoint, subscribed_at
FROM bus.subscriptions
ORDER BY endpoint, message_type";
