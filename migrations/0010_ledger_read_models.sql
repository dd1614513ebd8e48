-- Read models of the double-entry ledger (issue 24): balances held and available, limits and
-- metadata on accounts; system accounts' balances; transactions; holds. Every table here is
-- derived from `events` and can be rebuilt from it.

-- An overdraft takes a posted balance below zero, and so possibly a currency's total.
ALTER TABLE accounts DROP CONSTRAINT accounts_balance_check;
ALTER TABLE currency_totals DROP CONSTRAINT currency_totals_total_balance_check;

ALTER TABLE accounts
    -- Reserved by open holds: part of the posted balance, not available.
    ADD COLUMN held            bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    ADD COLUMN available       bigint GENERATED ALWAYS AS (balance - held) STORED,
    ADD COLUMN overdraft_limit bigint NOT NULL DEFAULT 0 CHECK (overdraft_limit >= 0),
    ADD COLUMN max_balance     bigint,
    ADD COLUMN metadata        jsonb  NOT NULL DEFAULT '{}';

-- A transaction's (or a captured hold's) entry: the id, and the legs touching this account
-- with the other side and the signed amount. Its amount is the net of those legs, which may be
-- zero (money in and out again in one transaction).
ALTER TABLE account_entries DROP CONSTRAINT account_entries_amount_check;
ALTER TABLE account_entries ADD CHECK (amount >= 0);
ALTER TABLE account_entries
    ADD COLUMN transaction_id uuid,
    ADD COLUMN legs           jsonb;

-- System accounts (`@world:EUR`, ...) have no events: their balances are derived from the
-- client side of every movement. One row per (system account, projection partition): each
-- partition has one writer, so deposits to accounts of different partitions never wait on one
-- row. Readers sum the rows; numeric, because a sum of many i64 amounts can exceed i64.
CREATE TABLE system_account_balances (
    account   text    NOT NULL,
    currency  text    NOT NULL,
    partition integer NOT NULL CHECK (partition >= 0),
    balance   numeric NOT NULL,
    PRIMARY KEY (account, partition)
);

-- The `transactions` projection: one row per posted transaction, legs as posted.
CREATE TABLE transactions (
    transaction_id uuid        PRIMARY KEY,
    legs           jsonb       NOT NULL,
    reference      text        NOT NULL,
    metadata       jsonb       NOT NULL DEFAULT '{}',
    version        bigint      NOT NULL,
    posted_at      timestamptz NOT NULL
);

-- The `holds` projection: one row per hold and where it stands.
CREATE TABLE holds (
    hold_id         uuid        PRIMARY KEY,
    account_id      text        NOT NULL,
    currency        text        NOT NULL,
    amount          bigint      NOT NULL CHECK (amount > 0),
    reference       text        NOT NULL,
    expires_at      timestamptz,
    status          text        NOT NULL
        CHECK (status IN ('held', 'captured', 'voided', 'expired')),
    captured_amount bigint      NOT NULL DEFAULT 0 CHECK (captured_amount >= 0),
    captured_to     text,
    version         bigint      NOT NULL,
    placed_at       timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    ended_at        timestamptz
);
CREATE INDEX holds_by_account ON holds (account_id, placed_at, hold_id);
