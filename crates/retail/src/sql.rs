//! Every statement the client runs, named table first, verb second. The only dynamic
//! identifiers are queue and delayed tables, built from a validated endpoint name and
//! quoted by transport-pg; every value is a bind parameter.

/// Whether relation `$1` (schema-qualified) exists.
pub const TABLE_EXISTS: &str = "SELECT to_regclass($1) IS NOT NULL";

/// Records one order the client placed.
pub const RETAIL_ORDER_INSERT: &str = "\
INSERT INTO retail.orders
    (order_id, run_id, kind, customer_id, amount_cents, currency, card_token)
VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Marks an order as sent a second time.
pub const RETAIL_ORDER_MARK_RESUBMITTED: &str = "\
UPDATE retail.orders
SET resubmitted = true
WHERE order_id = $1";

/// The client's record of one order.
pub const RETAIL_ORDER_GET: &str = "\
SELECT run_id, kind, card_token, amount_cents, currency, resubmitted,
       to_char(placed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')
FROM retail.orders
WHERE order_id = $1";

/// Sales's record of one order.
pub const SALES_ORDER_GET: &str = "\
SELECT status, cancel_reason,
       to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')
FROM sales.orders
WHERE order_id = $1";

/// Billing's record of one order's payment.
pub const BILLING_PAYMENT_GET: &str = "\
SELECT state, charge_id, refund_id, decline_reason
FROM billing.payments
WHERE order_id = $1";

/// Shipping's record of one order's shipment.
pub const SHIPPING_SHIPMENT_GET: &str = "\
SELECT tracking_number
FROM shipping.shipments
WHERE order_id = $1";

/// One row per order the client recorded (of run `$1`, or all when NULL) with what every
/// other table says about it: Sales's status, the shipment row, and the ledger's count of
/// succeeded charges, refunds and shipments (the ledger keys by idempotency key and keeps
/// the order id apart, so a second effect under another key is counted here).
pub const VERIFY_ORDER_FACTS: &str = "\
WITH scope AS (
    SELECT order_id
    FROM retail.orders
    WHERE $1::text IS NULL OR run_id = $1
),
effects AS (
    SELECT l.order_id,
           count(*) FILTER (WHERE l.operation = 'charge') AS charges,
           count(*) FILTER (WHERE l.operation = 'refund') AS refunds,
           count(*) FILTER (WHERE l.operation = 'shipment') AS shipments
    FROM gateway.ledger l
    JOIN scope USING (order_id)
    WHERE l.state = 'succeeded'
    GROUP BY l.order_id
)
SELECT s.order_id,
       o.status,
       sh.order_id IS NOT NULL AS has_shipment,
       coalesce(e.charges, 0),
       coalesce(e.refunds, 0),
       coalesce(e.shipments, 0)
FROM scope s
LEFT JOIN sales.orders o USING (order_id)
LEFT JOIN shipping.shipments sh USING (order_id)
LEFT JOIN effects e USING (order_id)
ORDER BY s.order_id";

/// Every installed endpoint, whose queue and delayed tables verify reads.
pub const ENDPOINTS_LIST: &str = "SELECT name FROM bus.endpoints ORDER BY name";

/// Rows of run `$1` (every row when NULL) waiting in `table`, a quoted queue or delayed
/// table of a validated endpoint name; `$2` is the run id header's name.
pub fn waiting_count(table: &str) -> String {
    format!(
        "\
SELECT count(*)
FROM {table}
WHERE $1::text IS NULL OR headers->>($2::text) = $1"
    )
}

/// The error queue's rows of run `$1` (every row when NULL), oldest first; `$2` is the
/// run id header's name.
pub const FAILED_MESSAGES_OF_RUN: &str = "\
SELECT id, origin_queue, coalesce(message_type, '?'), error_kind, error_message
FROM bus.failed_messages
WHERE $1::text IS NULL OR headers->>($2::text) = $1
ORDER BY id";
