-- Transfers (issue 6): the account steps' exactly-once guard, the audit trail by correlation id,
-- and the `transfers` read model.

-- At most one debit, credit, refund and settle per (account, transfer), whatever command id
-- carried it: the last guard behind the process manager's deterministic command ids and the
-- account's own in-flight set. The command-service maps this index's violation, by name, to
-- "already applied". Events are stored as {"<EventType>": {...}}, hence payload -> event_type.
CREATE UNIQUE INDEX events_transfer_step
    ON events (aggregate_id, event_type, ((payload -> event_type ->> 'transfer_id')))
    WHERE aggregate_type = 'account'
      AND event_type IN ('TransferDebited', 'TransferCredited', 'TransferRefunded', 'TransferSettled');

-- A flow's events across aggregates (GET /v1/audit/correlations/{id}/events): a transfer's
-- own events and its steps on both accounts carry the transfer id as correlation id.
CREATE INDEX events_by_correlation ON events ((metadata ->> 'correlation_id'), global_position);

-- The `transfers` projection.
CREATE TABLE transfers (
    transfer_id    uuid        PRIMARY KEY,
    from_account   text        NOT NULL,
    to_account     text        NOT NULL,
    amount         bigint      NOT NULL CHECK (amount > 0),
    currency       text        NOT NULL,
    reference      text        NOT NULL,
    status         text        NOT NULL
        CHECK (status IN ('requested', 'debited', 'credited', 'refunding', 'completed', 'failed')),
    failure_code   text,
    failure_reason text,
    version        bigint      NOT NULL,
    requested_at   timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    settled_at     timestamptz
);
CREATE INDEX transfers_by_from ON transfers (from_account, requested_at, transfer_id);
CREATE INDEX transfers_by_to ON transfers (to_account, requested_at, transfer_id);

-- Entries made by a transfer's steps link to it.
ALTER TABLE account_entries ADD COLUMN transfer_id uuid;
