-- Poison events and the aggregates they hold back (per projection).

-- The event a projection gave up on (also published to TALLY_DLQ), one per aggregate: while it
-- is here, the aggregate's later events wait in projection_parked_events instead of being
-- applied out of order. `action` is set by an operator (`tally dlq retry|drop`) and carried out
-- by the projection worker.
CREATE TABLE projection_parked (
    projection     text        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL,
    event          jsonb       NOT NULL,
    error          text        NOT NULL,
    attempts       integer     NOT NULL,
    parked_at      timestamptz NOT NULL DEFAULT now(),
    action         text        CHECK (action IN ('retry', 'drop')),
    PRIMARY KEY (projection, aggregate_type, aggregate_id)
);

CREATE TABLE projection_parked_events (
    projection     text   NOT NULL,
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL,
    event          jsonb  NOT NULL,
    PRIMARY KEY (projection, aggregate_type, aggregate_id, sequence)
);

-- Events an operator dropped (`tally dlq drop`), so that applied + dropped accounts for every
-- version a projection reached, and anything else shows up as skipped.
ALTER TABLE projection_checkpoints ADD COLUMN events_dropped bigint NOT NULL DEFAULT 0;
