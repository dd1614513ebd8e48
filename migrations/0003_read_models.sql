-- Read models and the projections' bookkeeping. Every table here is derived from `events` and
-- can be rebuilt from it.

-- Each projection's position in the events stream, advanced in the same transaction as the
-- read-model rows it describes.
CREATE TABLE projection_checkpoints (
    projection      text        PRIMARY KEY,
    stream_sequence bigint      NOT NULL DEFAULT 0,
    events_applied  bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- The last event sequence each projection applied per aggregate: a redelivered or duplicated
-- event (sequence <= version) is skipped, a gap (sequence > version + 1) is never jumped.
CREATE TABLE projection_versions (
    projection     text   NOT NULL,
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    version        bigint NOT NULL CHECK (version > 0),
    PRIMARY KEY (projection, aggregate_type, aggregate_id)
);

CREATE TABLE accounts (
    account_id text        PRIMARY KEY,
    owner      text        NOT NULL,
    currency   text        NOT NULL,
    balance    bigint      NOT NULL CHECK (balance >= 0),
    status     text        NOT NULL CHECK (status IN ('open', 'frozen', 'closed')),
    version    bigint      NOT NULL,
    opened_at  timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX accounts_by_owner ON accounts (owner, account_id);
CREATE INDEX accounts_by_status ON accounts (status, account_id);
CREATE INDEX accounts_by_currency ON accounts (currency, account_id);

-- Every money movement, with the running balance after it.
CREATE TABLE account_entries (
    account_id    text        NOT NULL,
    sequence      bigint      NOT NULL,
    direction     text        NOT NULL CHECK (direction IN ('credit', 'debit')),
    amount        bigint      NOT NULL CHECK (amount > 0),
    reference     text        NOT NULL,
    balance_after bigint      NOT NULL,
    recorded_at   timestamptz NOT NULL,
    command_id    uuid        NOT NULL,
    PRIMARY KEY (account_id, sequence)
);
CREATE INDEX account_entries_by_time ON account_entries (account_id, recorded_at, sequence);

-- Per currency: open (and frozen) accounts and the sum of their balances. numeric, because a
-- sum of many i64 balances can exceed i64.
CREATE TABLE currency_totals (
    currency      text    PRIMARY KEY,
    open_accounts bigint  NOT NULL CHECK (open_accounts >= 0),
    total_balance numeric NOT NULL CHECK (total_balance >= 0)
);
