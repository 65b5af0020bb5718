-- The client's own record of every order it placed, written in the same transaction as
-- the PlaceOrder send: verify starts from here, so an order Sales never heard of still
-- counts. The run id scopes verify to one run when a database holds several.
CREATE TABLE retail.orders (
    order_id     text        PRIMARY KEY,
    run_id       text        NOT NULL,
    -- What the client meant to happen: normal ships, declined is refused, slow settles
    -- after the provider's settle time.
    kind         text        NOT NULL CHECK (kind IN ('normal', 'declined', 'slow')),
    customer_id  text        NOT NULL,
    amount_cents bigint      NOT NULL CHECK (amount_cents >= 0),
    currency     text        NOT NULL,
    card_token   text        NOT NULL,
    -- Set when a second PlaceOrder for the same order was sent.
    resubmitted  boolean     NOT NULL DEFAULT false,
    placed_at    timestamptz NOT NULL DEFAULT now()
);

-- verify --run reads one run's orders.
CREATE INDEX orders_run_idx ON retail.orders (run_id);
