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

use crate::runner::ApplyError;

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
         FROM accounts WHERE account_id = ANY($1) FOR UPDATE",
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
        let (_, payload) = domain::account::upcast::upcast_payload(
            &event.event_type,
            &event.event_version,
            event.payload.clone(),
        );
        let payload: AccountEvent = serde_json::from_value(payload)
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
    write_accounts(tx, rows).await?;
    write_entries(tx, entries).await?;
    write_totals(tx, deltas).await?;
    Ok(())
}

async fn write_accounts(
    tx: &mut Transaction<'_, Postgres>,
    rows: Vec<AccountRow>,
) -> Result<(), ApplyError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut columns = (
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
        columns.0.push(r.account_id);
        columns.1.push(r.owner);
        columns.2.push(r.currency);
        columns.3.push(r.balance);
        columns.4.push(r.status);
        columns.5.push(r.version);
        columns.6.push(r.opened_at);
        columns.7.push(r.updated_at);
    }
    sqlx::query(
        "INSERT INTO accounts (account_id, owner, currency, balance, status, version, opened_at, updated_at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[], $7::timestamptz[], $8::timestamptz[])
         ON CONFLICT (account_id) DO UPDATE SET
             balance = EXCLUDED.balance, status = EXCLUDED.status,
             version = EXCLUDED.version, updated_at = EXCLUDED.updated_at",
    )
    .bind(columns.0)
    .bind(columns.1)
    .bind(columns.2)
    .bind(columns.3)
    .bind(columns.4)
    .bind(columns.5)
    .bind(columns.6)
    .bind(columns.7)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn write_entries(
    tx: &mut Transaction<'_, Postgres>,
    entries: Vec<Entry>,
) -> Result<(), ApplyError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut c = (
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
    for e in entries {
        c.0.push(e.account_id);
        c.1.push(e.sequence);
        c.2.push(e.direction.to_owned());
        c.3.push(e.amount);
        c.4.push(e.reference);
        c.5.push(e.balance_after);
        c.6.push(e.recorded_at);
        c.7.push(e.command_id);
        c.8.push(e.transfer_id);
    }
    // The per-aggregate version check already excludes duplicates; DO NOTHING is a second guard.
    sqlx::query(
        "INSERT INTO account_entries (account_id, sequence, direction, amount, reference, balance_after, recorded_at, command_id, transfer_id)
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::bigint[], $7::timestamptz[], $8::uuid[], $9::uuid[])
         ON CONFLICT DO NOTHING",
    )
    .bind(c.0)
    .bind(c.1)
    .bind(c.2)
    .bind(c.3)
    .bind(c.4)
    .bind(c.5)
    .bind(c.6)
    .bind(c.7)
    .bind(c.8)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn write_totals(
    tx: &mut Transaction<'_, Postgres>,
    deltas: HashMap<String, CurrencyDelta>,
) -> Result<(), ApplyError> {
    // Sorted, so two workers updating the same currencies lock the rows in the same order.
    let mut deltas: Vec<_> = deltas.into_iter().collect();
    deltas.sort_by(|a, b| a.0.cmp(&b.0));
    for (currency, delta) in deltas {
        // A zero delta is still written: whether the row exists must not depend on how events
        // were batched, or a rebuild would differ from the live model.
        // Increments, not read-modify-write: concurrent batches on one currency row serialise
        // on its row lock and both deltas count. Ensure-then-update rather than an upsert:
        // PostgreSQL checks constraints on the proposed INSERT row before resolving the
        // conflict, so a negative delta would fail `total_balance >= 0` in an upsert.
        sqlx::query(
            "INSERT INTO currency_totals (currency, open_accounts, total_balance)
             VALUES ($1, 0, 0) ON CONFLICT (currency) DO NOTHING",
        )
        .bind(&currency)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE currency_totals
             SET open_accounts = open_accounts + $2, total_balance = total_balance + $3::text::numeric
             WHERE currency = $1",
        )
        .bind(&currency)
        .bind(delta.open_accounts)
        .bind(delta.balance.to_string())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
