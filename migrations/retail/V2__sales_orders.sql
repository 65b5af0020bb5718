-- Sales's record of every order, keyed by the client's order id so that a resubmitted
-- PlaceOrder finds its row and changes nothing. Sales subscribes to the events that move
-- an order on, so this one table answers "where is my order".
-- Terminal statuses are shipped and cancelled; the others are on the way there.
CREATE TABLE sales.orders (
    order_id      text        PRIMARY KEY,
    customer_id   text        NOT NULL,
    amount_cents  bigint      NOT NULL CHECK (amount_cents >= 0),
    currency      text        NOT NULL,
    status        text        NOT NULL DEFAULT 'placed'
        CHECK (status IN ('placed', 'billed', 'payment_failed', 'cancelled', 'shipped')),
    -- Why the order was cancelled, from CancelOrder; NULL unless cancelled.
    cancel_reason text,
    placed_at     timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Operators and verify look for orders that are not finished yet.
CREATE INDEX orders_status_idx ON sales.orders (status);

-- What the customer was told, one row per notice (a cancellation, a shipment), so a
-- duplicate notice shows up as a second row instead of being hidden by an update.
CREATE TABLE sales.notifications (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id   text        NOT NULL REFERENCES sales.orders (order_id),
    kind       text        NOT NULL CHECK (kind IN ('cancelled', 'shipped', 'refunded')),
    message    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Notifications are read per order.
CREATE INDEX notifications_order_idx ON sales.notifications (order_id, id);
