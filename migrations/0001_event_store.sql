-- The event store, in postgres-es 0.5's shape (it names every column it reads and writes), plus
-- defaulted columns of ours that postgres-es never touches:
--   global_position  commit-independent insertion order, for the outbox relay and audits;
--   tx_id            the writing transaction, so readers can wait for earlier transactions to
--                    commit before reading past them (see ARCHITECTURE.md, "Outbox order");
--   recorded_at      when the row was written.
-- payload and metadata are jsonb rather than json: postgres-es binds serde_json values, which
-- Postgres casts either way, and jsonb lets projections and audits index into them.
CREATE TABLE events (
    aggregate_type  text      NOT NULL,
    aggregate_id    text      NOT NULL,
    sequence        bigint    NOT NULL CHECK (sequence >= 0),
    event_type      text      NOT NULL,
    event_version   text      NOT NULL,
    payload         jsonb     NOT NULL,
    metadata        jsonb     NOT NULL,
    global_position bigint    GENERATED ALWAYS AS IDENTITY,
    tx_id           xid8      NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    -- The primary key is the optimistic-concurrency check: a second writer of the same
    -- (aggregate, sequence) fails with 23505, which postgres-es reports as a conflict. No other
    -- constraint on this table may fail with 23505, or it would be misreported as a conflict.
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

-- Identity values never repeat, so this index cannot raise a spurious 23505.
CREATE UNIQUE INDEX events_global_position ON events (global_position);
-- The outbox relay reads in (tx_id, global_position) order.
CREATE INDEX events_tx_order ON events (tx_id, global_position);

-- postgres-es's snapshot table, kept so its schema is complete. Tally does not use postgres-es's
-- snapshot modes (they corrupt state in 0.5.0); its own snapshots arrive with the command path.
CREATE TABLE snapshots (
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    last_sequence    bigint NOT NULL CHECK (last_sequence >= 0),
    current_snapshot bigint NOT NULL CHECK (current_snapshot >= 0),
    payload          jsonb  NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);
