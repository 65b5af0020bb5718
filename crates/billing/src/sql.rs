//! Every statement Billing runs, named table first, verb second. All run inside the
//! receive transaction; every value is a bind parameter.

/// What Billing knows about an order's money.
pub const PAYMENT_GET: &str = "\
SELECT state, charge_id, amount_cents, currency, decline_reason, refund_id, refunded_cents
FROM billing.payments
WHERE order_id = $1";

/// The same, locked until commit, so that two RefundPayments for one order refund one
/// after the other and the second finds the first's refund.
pub const PAYMENT_LOCK: &str = "\
SELECT state, charge_id, amount_cents, currency, decline_reason, refund_id, refunded_cents
FROM billing.payments
WHERE order_id = $1
FOR UPDATE";

/// Records a successful charge. Of two handlers that charged one order at once (a
/// duplicate OrderPlaced on another instance), the second inserts nothing and
/// republishes what the first stored.
pub const PAYMENT_INSERT_CHARGED: &str = "\
INSERT INTO billing.payments
    (order_id, state, charge_key, charge_id, amount_cents, currency, charged_at)
VALUES ($1, 'charged', $2, $3, $4, $5, now())
ON CONFLICT DO NOTHING";

/// Records a declined charge; as [`PAYMENT_INSERT_CHARGED`].
pub const PAYMENT_INSERT_DECLINED: &str = "\
INSERT INTO billing.payments
    (order_id, state, charge_key, amount_cents, currency, decline_reason)
VALUES ($1, 'declined', $2, $3, $4, $5)
ON CONFLICT DO NOTHING";

/// Records the refund of a charged order.
pub const PAYMENT_MARK_REFUNDED: &str = "\
UPDATE billing.payments
SET state = 'refunded', refund_key = $2, refund_id = $3, refunded_cents = $4,
    refunded_at = now(), updated_at = now()
WHERE order_id = $1 AND state = 'charged'";
