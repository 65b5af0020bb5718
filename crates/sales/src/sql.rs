//! Every statement Sales runs, named table first, verb second. All run inside the receive
//! transaction; every value is a bind parameter.

/// Stores a new order; a resubmission (same order id) inserts nothing.
pub const ORDER_INSERT: &str = "\
INSERT INTO sales.orders (order_id, customer_id, amount_cents, currency)
VALUES ($1, $2, $3, $4)
ON CONFLICT (order_id) DO NOTHING";

/// What Sales stored for an order, to compare a resubmission with.
pub const ORDER_GET: &str = "\
SELECT customer_id, amount_cents, currency
FROM sales.orders
WHERE order_id = $1";

/// An order's status, locked until commit so that two events for one order (on two
/// workers or two instances) change it one after the other.
pub const ORDER_LOCK_STATUS: &str = "\
SELECT status
FROM sales.orders
WHERE order_id = $1
FOR UPDATE";

/// Moves an order to status `$2` if it is in one of the statuses `$3`, the ones that may
/// move there; the row's lock orders two events for one order as the SELECT FOR UPDATE
/// does, and the second re-checks the status the first left.
pub const ORDER_ADVANCE: &str = "\
UPDATE sales.orders
SET status = $2, updated_at = now()
WHERE order_id = $1 AND status = ANY($3)";

/// [`ORDER_ADVANCE`] that also records a notice to the customer (kind `$4`, text `$5`)
/// when, and only when, the order moved; the rows affected are the notices inserted.
pub const ORDER_ADVANCE_NOTIFY: &str = "\
WITH moved AS (
    UPDATE sales.orders
    SET status = $2, updated_at = now()
    WHERE order_id = $1 AND status = ANY($3)
    RETURNING order_id
)
INSERT INTO sales.notifications (order_id, kind, message)
SELECT order_id, $4::text, $5::text
FROM moved";

/// Cancels an order with its reason.
pub const ORDER_CANCEL: &str = "\
UPDATE sales.orders
SET status = 'cancelled', cancel_reason = $2, updated_at = now()
WHERE order_id = $1";

/// Records a notice to the customer.
pub const NOTIFICATION_INSERT: &str = "\
INSERT INTO sales.notifications (order_id, kind, message)
VALUES ($1, $2, $3)";

/// Whether the customer was already sent a notice of this kind for the order.
pub const NOTIFICATION_EXISTS: &str = "\
SELECT EXISTS (
    SELECT 1
    FROM sales.notifications
    WHERE order_id = $1 AND kind = $2
)";
