//! The `accounts` projection: tables `accounts`, `account_entries` and `currency_totals`, kept
//! in one projection because they must agree with each other (the totals are the sum over the
//! accounts) and so change in the same transaction.
//!
//! A batch is folded in memory first (final row per account, new entries, one delta per
//! currency), then written with a handful of set-based statements, whatever the batch size.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::account::AccountEvent;
use domain::envelope::EventMessage;
use sqlx::{Postgres, Transaction};

use crate::apply_error::ApplyError;

pub const NAME: &str = "accounts";

/// The tables this projection owns (and a rebuild replaces).
pub const TABLES: [&str; 3] = ["accounts", "account_entries", "currency_totals"];

#[derive(Debug, Clone, sqlx::FromRow)]
struct AccountRow {
    account_id: String,
    owner: String,
    currency: String,
    balance: i64,
    status: String,
    version: i64,
    opened_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug)]
struct Entry {
    account_id: String,
    sequence: i64,
    direction: &'static str,
    amount: i64,
    reference: String,
    balance_after: i64,
    recorded_at: DateTime<Utc>,
    command_id: uuid::Uuid,
    /// The transfer whose step made this entry.
    transfer_id: Option<uuid::Uuid>,
}

#[derive(Debug, Default)]
struct CurrencyDelta {
    open_accounts: i64,
    balance: i128,
}

/// Applies `events` (already checked to be the next ones per aggregate, in order).
pub async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    events: &[EventMessage],
) -> Result<(), ApplyError> {
    let mut ids: Vec<String> = events.iter().map(|e| e.aggregate_id.clone()).collect();
    ids.sort_unstable();
    ids.dedup();
    let existing: Vec<AccountRow> = sqlx::query_as(
        "SELECT account_id, owner, currency, balance, status, version, opened_at, updated_at
         FROM accounts WHERE account_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut rows: HashMap<String, AccountRow> = existing
        .into_iter()
        .map(|r| (r.account_id.clone(), r))
        .collect();
    let mut entries = Vec::new();
    let mut deltas: HashMap<String, CurrencyDelta> = HashMap::new();

    for event in events {
        let payload = domain::account::upcast::read_event(
            &event.event_type,
            &event.event_version,
            &event.payload,
        )
        .map_err(|e| ApplyError::poison(event, format!("unreadable payload: {e}")))?;
        let sequence = i64::try_from(event.sequence)
            .map_err(|_| ApplyError::poison(event, "sequence out of range"))?;
        if let AccountEvent::AccountOpened(opened) = &payload {
            rows.insert(
                event.aggregate_id.clone(),
                AccountRow {
                    account_id: event.aggregate_id.clone(),
                    owner: opened.owner.clone(),
                    currency: opened.currency.clone(),
                    balance: 0,
                    status: "open".into(),
                    version: sequence,
                    opened_at: event.recorded_at,
                    updated_at: event.recorded_at,
                },
            );
            deltas
                .entry(opened.currency.clone())
                .or_default()
                .open_accounts += 1;
            continue;
        }
        let row = rows.get_mut(&event.aggregate_id).ok_or_else(|| {
            ApplyError::poison(event, "event for an account that was never opened")
        })?;
        let command_id = event
            .metadata
            .get("command_id")
            .and_then(|v| v.as_str())
            .and_then(|s| uuid::Uuid::parse_str(s).ok())
            .unwrap_or_default();
        let delta = deltas.entry(row.currency.clone()).or_default();
        // (direction, amount, reference, balance after, transfer) of a money movement.
        let movement = match payload {
            AccountEvent::AccountOpened(_) => None,
            AccountEvent::MoneyDeposited(e) => {
                Some(("credit", e.amount, e.reference, e.balance_after, None))
            }
            AccountEvent::MoneyWithdrawn(e) => {
                Some(("debit", e.amount, e.reference, e.balance_after, None))
            }
            AccountEvent::TransferDebited(e) => Some((
                "debit",
                e.amount,
                format!("transfer to {}", e.to),
                e.balance_after,
                Some(e.transfer_id),
            )),
            AccountEvent::TransferCredited(e) => Some((
                "credit",
                e.amount,
                format!("transfer from {}", e.from),
                e.balance_after,
                Some(e.transfer_id),
            )),
            AccountEvent::TransferRefunded(e) => Some((
                "credit",
                e.amount,
                "refund of a failed transfer".to_owned(),
                e.balance_after,
                Some(e.transfer_id),
            )),
            AccountEvent::TransferSettled(_) => None,
            AccountEvent::AccountFrozen(_) => {
                row.status = "frozen".into();
                None
            }
            AccountEvent::AccountUnfrozen(_) => {
                row.status = "open".into();
                None
            }
            AccountEvent::AccountClosed(_) => {
                row.status = "closed".into();
                delta.open_accounts -= 1;
                None
            }
        };
        if let Some((direction, amount, reference, balance_after, transfer_id)) = movement {
            row.balance = balance_after;
            delta.balance += if direction == "credit" {
                i128::from(amount)
            } else {
                -i128::from(amount)
            };
            entries.push(Entry {
                account_id: event.aggregate_id.clone(),
                sequence,
                direction,
                amount,
                reference,
                balance_after,
                recorded_at: event.recorded_at,
                command_id,
                transfer_id,
            });
        }
        row.version = sequence;
        row.updated_at = event.recorded_at;
    }

    // Sorted, so concurrent transactions lock rows in the same order (no deadlocks).
    let mut rows: Vec<AccountRow> = rows.into_values().collect();
    rows.sort_unstable_by(|a, b| a.account_id.cmp(&b.account_id));
    write(tx, rows, entries, deltas).await
}

/// Accounts, entries and currency totals in one statement: one round trip per batch instead
/// of one per table, which under load (every round trip waits for a busy CPU) was most of a
/// batch's time.
async fn write(
    tx: &mut Transaction<'_, Postgres>,
    rows: Vec<AccountRow>,
    entries: Vec<Entry>,
    deltas: HashMap<String, CurrencyDelta>,
) -> Result<(), ApplyError> {
    let mut a = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for r in rows {
        a.0.push(r.account_id);
        a.1.push(r.owner);
        a.2.push(r.currency);
        a.3.push(r.balance);
        a.4.push(r.status);
        a.5.push(r.version);
        a.6.push(r.opened_at);
        a.7.push(r.updated_at);
    }
    let mut e = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for entry in entries {
        e.0.push(entry.account_id);
        e.1.push(entry.sequence);
        e.2.push(entry.direction.to_owned());
        e.3.push(entry.amount);
        e.4.push(entry.reference);
        e.5.push(entry.balance_after);
        e.6.push(entry.recorded_at);
        e.7.push(entry.command_id);
        e.8.push(entry.transfer_id);
    }
    // Sorted, so two workers updating the same currencies lock the rows in the same order.
    let mut deltas: Vec<_> = deltas.into_iter().collect();
    deltas.sort_by(|x, y| x.0.cmp(&y.0));
    let (currencies, opened, balances): (Vec<String>, Vec<i64>, Vec<String>) = deltas
        .into_iter()
        .map(|(c, d)| (c, d.open_accounts, d.balance.to_string()))
        .fold((Vec::new(), Vec::new(), Vec::new()), |mut t, (c, o, b)| {
            t.0.push(c);
            t.1.push(o);
            t.2.push(b);
            t
        });
    // Totals: increments, not read-modify-write, so concurrent batches on one currency row
    // serialise on its row lock and both deltas count. A zero delta is still written: whether
    // the row exists must not depend on how events were batched, or a rebuild would differ
    // from the live model. Existing rows are updated; only a currency seen for the first time
    // is inserted, with its first delta (never negative: its accounts all open in this batch
    // or later). Not a plain upsert: PostgreSQL checks constraints on the proposed INSERT row
    // before resolving the conflict, so a negative delta would fail `total_balance >= 0`.
    // Entries are plain inserts: the per-aggregate version check, in this transaction and
    // under the apply lock, already excludes a duplicate. A second guard (ON CONFLICT DO
    // NOTHING) cost half as much again per entry (speculative insertion) and would hide an
    // entry that exists without its version; now that fails the batch and the event is
    // dead-lettered, where an operator sees it.
    sqlx::query(
        "WITH written_accounts AS (
             INSERT INTO accounts (account_id, owner, currency, balance, status, version, opened_at, updated_at)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[], $7::timestamptz[], $8::timestamptz[])
             ON CONFLICT (account_id) DO UPDATE SET
                 balance = EXCLUDED.balance, status = EXCLUDED.status,
                 version = EXCLUDED.version, updated_at = EXCLUDED.updated_at
         ), written_entries AS (
             INSERT INTO account_entries (account_id, sequence, direction, amount, reference, balance_after, recorded_at, command_id, transfer_id)
             SELECT * FROM UNNEST($9::text[], $10::bigint[], $11::text[], $12::bigint[], $13::text[], $14::bigint[], $15::timestamptz[], $16::uuid[], $17::uuid[])
         ), delta (currency, open_accounts, total_balance) AS (
             SELECT * FROM UNNEST($18::text[], $19::bigint[], $20::text[]::numeric[])
         ), updated AS (
             UPDATE currency_totals t
             SET open_accounts = t.open_accounts + d.open_accounts,
                 total_balance = t.total_balance + d.total_balance
             FROM delta d WHERE t.currency = d.currency
             RETURNING t.currency
         )
         INSERT INTO currency_totals (currency, open_accounts, total_balance)
         SELECT currency, open_accounts, total_balance FROM delta
         WHERE currency NOT IN (SELECT currency FROM updated)
         -- Another worker inserted it meanwhile (a hand-over): add to it all the same.
         ON CONFLICT (currency) DO UPDATE SET
             open_accounts = currency_totals.open_accounts + EXCLUDED.open_accounts,
             total_balance = currency_totals.total_balance + EXCLUDED.total_balance",
    )
    .bind(a.0)
    .bind(a.1)
    .bind(a.2)
    .bind(a.3)
    .bind(a.4)
    .bind(a.5)
    .bind(a.6)
    .bind(a.7)
    .bind(e.0)
    .bind(e.1)
    .bind(e.2)
    .bind(e.3)
    .bind(e.4)
    .bind(e.5)
    .bind(e.6)
    .bind(e.7)
    .bind(e.8)
    .bind(currencies)
    .bind(opened)
    .bind(balances)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
