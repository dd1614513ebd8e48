-- The command path: idempotency, our own snapshots, the outbox relay's checkpoint and wake-up.

-- Command id -> the reply it got. Written in the same statement as the command's events (so
-- an accepted reply exists exactly when its events do), and for domain rejections on their own,
-- so a retry with the same id always gets the first answer.
CREATE TABLE command_log (
    command_id     uuid        PRIMARY KEY,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    status         text        NOT NULL CHECK (status IN ('accepted', 'rejected')),
    reply          jsonb       NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now()
);

-- One snapshot per aggregate, taken every N events by the command-service. A cache: dropping
-- every row only makes loads slower. `state_version` lets a changed aggregate layout fall back
-- to a full replay instead of misreading an old snapshot.
CREATE TABLE aggregate_snapshots (
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    last_sequence  bigint      NOT NULL CHECK (last_sequence > 0),
    state_version  integer     NOT NULL,
    payload        jsonb       NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- How far the outbox relay has published each stream, in commit-safe order
-- (tx_id, global_position), and the stream sequence that publication reached.
CREATE TABLE relay_checkpoints (
    stream          text        PRIMARY KEY,
    tx_id           xid8        NOT NULL DEFAULT '0'::xid8,
    global_position bigint      NOT NULL DEFAULT 0,
    stream_sequence bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Wakes the relay when events commit (NOTIFY is delivered at commit); a poll backs it up.
CREATE FUNCTION tally_notify_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tally_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION tally_notify_events();
