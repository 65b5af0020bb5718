-- The stand-in payment provider's and courier's ledger: one row per idempotency key,
-- inserted (ON CONFLICT) in a transaction of its own when a request starts, so two
-- concurrent requests with one key cannot both take effect. The order id is stored apart
-- from the key, so a second effect for one order under another key shows as a second row.
CREATE TABLE gateway.ledger (
    idempotency_key text        PRIMARY KEY,
    operation       text        NOT NULL CHECK (operation IN ('charge', 'refund', 'shipment')),
    order_id        text        NOT NULL,
    -- Charges and refunds only.
    amount_cents    bigint      CHECK (amount_cents >= 0),
    currency        text,
    -- Charges only: the token decides the outcome.
    card_token      text,
    -- Refunds only: the charge being refunded, when the caller named it.
    charge_id       text,
    state           text        NOT NULL DEFAULT 'in_flight'
        CHECK (state IN ('in_flight', 'succeeded', 'declined')),
    -- The HTTP status and JSON body every repeat of the key gets once settled.
    http_status     integer,
    result          jsonb,
    -- Every request with this key, the first included.
    requests_seen   integer     NOT NULL DEFAULT 1 CHECK (requests_seen >= 1),
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    settled_at      timestamptz,
    -- Settled exactly when it has left in_flight, and then with its answer.
    CHECK ((state = 'in_flight') = (settled_at IS NULL)),
    CHECK (state = 'in_flight' OR (http_status IS NOT NULL AND result IS NOT NULL))
);

-- verify and the refund check look up an order's operations.
CREATE INDEX ledger_order_idx ON gateway.ledger (order_id, operation);

-- A restarted gateway resumes settling whatever was left in flight.
CREATE INDEX ledger_in_flight_idx ON gateway.ledger (first_seen_at)
    WHERE state = 'in_flight';
