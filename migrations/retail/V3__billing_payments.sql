-- Billing's view of each order's money: one row per order, keyed by order id, so a
-- repeated OrderPlaced finds the outcome it already has and republishes it. The
-- provider's ledger (gateway.ledger) is the other side of the same story; verify compares
-- the two.
CREATE TABLE billing.payments (
    order_id      text        PRIMARY KEY,
    state         text        NOT NULL CHECK (state IN ('charged', 'declined', 'refunded')),
    -- The idempotency key the charge was made with, derived from the order id.
    charge_key    text        NOT NULL UNIQUE,
    -- The provider's charge id; NULL when declined.
    charge_id     text,
    amount_cents  bigint      NOT NULL CHECK (amount_cents >= 0),
    currency      text        NOT NULL,
    -- The provider's reason when declined.
    decline_reason text,
    refund_key    text        UNIQUE,
    refund_id     text,
    refunded_cents bigint     CHECK (refunded_cents >= 0),
    charged_at    timestamptz,
    refunded_at   timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    -- A refunded payment must say what was refunded.
    CHECK (state <> 'refunded' OR (refund_id IS NOT NULL AND refunded_at IS NOT NULL))
);
