-- Saga state, one table for every saga type: the type is a column, so a new saga type needs
-- no DDL and no dynamic identifier. A row is found by (saga_type, correlation) when a message
-- arrives and by id when a timeout comes back; it is locked with SELECT ... FOR UPDATE inside
-- the receive transaction and changed in that same transaction.
--
-- A completed saga keeps its row as a closed record (state 'completed', completed_at set) for
-- its type's retention period, so a late or duplicated start message finds it closed instead
-- of starting a second saga; then the runtime purges it.
--
-- Every message updates data and version but no indexed column, so those updates can be HOT;
-- fillfactor leaves room on the page for them.
CREATE TABLE bus.sagas (
    id                        uuid        PRIMARY KEY,
    -- The saga's type name, <contract>.<Type>, as Saga::NAME declares it.
    saga_type                 text        NOT NULL,
    -- The business id every message of one saga instance maps to, e.g. the order id.
    correlation               text        NOT NULL,
    state                     text        NOT NULL DEFAULT 'open',
    -- The saga's data as its serde type writes it, so an operator can read it with SQL.
    data                      jsonb       NOT NULL,
    -- Raised by every saved step; a save checks it, as a guard on top of the row lock.
    version                   bigint      NOT NULL DEFAULT 0,
    -- The message type that started the saga, and where its replies go.
    started_by                text        NOT NULL,
    originator                text,
    originator_correlation_id text,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    completed_at              timestamptz,
    -- The unique key the lock-or-create step conflicts on: two racing start messages make
    -- one row, the second waiting on the first's uncommitted insert instead of failing.
    CONSTRAINT sagas_correlation_key UNIQUE (saga_type, correlation),
    CONSTRAINT sagas_state_check CHECK (state IN ('open', 'completed')),
    CONSTRAINT sagas_completed_at_check CHECK ((state = 'completed') = (completed_at IS NOT NULL))
) WITH (fillfactor = 80);

-- Operators list the open sagas of a type that are older than a while (stuck ones).
CREATE INDEX sagas_open_idx ON bus.sagas (saga_type, created_at) WHERE state = 'open';

-- The purge takes the closed records of a type whose retention has run out, oldest first.
CREATE INDEX sagas_completed_idx ON bus.sagas (saga_type, completed_at)
    WHERE state = 'completed';
