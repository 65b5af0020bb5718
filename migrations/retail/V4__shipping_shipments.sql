-- Shipping's record of what the courier took: one row per order, so a repeated ShipOrder
-- finds its booking instead of making a second one.
CREATE TABLE shipping.shipments (
    order_id        text        PRIMARY KEY,
    -- The idempotency key the booking was made with, derived from the order id.
    shipment_key    text        NOT NULL UNIQUE,
    tracking_number text        NOT NULL,
    shipped_at      timestamptz NOT NULL DEFAULT now()
);
