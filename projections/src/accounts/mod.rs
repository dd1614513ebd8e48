//! The `accounts` projection: tables `accounts`, `account_entries`, `currency_totals` and
//! `system_account_balances`, kept in one projection because they must agree with each other
//! (the totals are the sum over the accounts, the system accounts' balances the other side of
//! the same movements) and so change in the same transaction.
//!
//! A batch is folded in memory first (final row per account, new entries, one delta per
//! currency and per system account), then written in one statement (`write`), whatever the
//! batch size.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::account::{AccountEvent, LegsPosted};
use domain::envelope::EventMessage;
use domain::ledger::SystemAccount;
use domain::ledger::postings;
use sqlx::{Postgres, Transaction};

use crate::apply_error::ApplyError;

mod notify;
mod write;

pub use notify::{Announcement, CHANNEL, Changed};

pub const NAME: &str = "accounts";

/// The tables this projection owns (and a rebuild replaces).
pub const TABLES: [&str; 4] = [
    "accounts",
    "account_entries",
    "currency_totals",
    "system_account_balances",
];

#[derive(Debug, Clone, sqlx::FromRow)]
struct AccountRow {
    account_id: String,
    owner: String,
    currency: String,
    balance: i64,
    held: i64,
    overdraft_limit: i64,
    max_balance: Option<i64>,
    metadata: serde_json::Value,
    status: String,
    version: i64,
    opened_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// Where its last change stands in the feed order (`FeedOrder`).
    feed_position: Option<i64>,
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
    /// The transaction (or captured hold) whose legs made this entry, and those legs.
    transaction_id: Option<uuid::Uuid>,
    legs: Option<serde_json::Value>,
    feed_position: Option<i64>,
}

/// How a batch's changes are ordered for the change feed (migration 0012, docs/feed.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedOrder {
    /// One partition's batch, applied in the partition's commit order: the `i`th event gets the
    /// position `first_position + i` (the partition's applied-events count, so positions
    /// strictly increase from batch to batch, whatever the stream sequences redelivered).
    Batch { first_position: i64 },
    /// Applied outside the partition's order (a released dead letter): announced, without a
    /// position.
    Unordered,
    /// A rebuild's copy: neither positioned nor announced (the live rows say everything).
    Rebuild,
}

impl FeedOrder {
    /// The feed position of the `index`th event of the batch; `None` when the order is unknown.
    fn position(self, index: usize) -> Option<i64> {
        let FeedOrder::Batch { first_position } = self else {
            return None;
        };
        first_position.checked_add(i64::try_from(index).ok()?)
    }
}

#[derive(Debug, Default)]
struct CurrencyDelta {
    open_accounts: i64,
    balance: i128,
}

/// A system account's change over the batch.
#[derive(Debug)]
struct SystemDelta {
    currency: String,
    balance: i128,
}

/// A money movement of one event: (direction, amount, reference, balance after, transfer,
/// transaction and its legs).
type Movement = (
    &'static str,
    i64,
    String,
    i64,
    Option<uuid::Uuid>,
    Option<(uuid::Uuid, serde_json::Value)>,
);

/// Applies `events` (already checked to be the next ones per aggregate, in order) for
/// `partition` of the projection (the key of its system-account rows; a rebuild uses 0).
pub async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    events: &[EventMessage],
    partition: u32,
    order: FeedOrder,
) -> Result<(), ApplyError> {
    let mut ids: Vec<String> = events.iter().map(|e| e.aggregate_id.clone()).collect();
    ids.sort_unstable();
    ids.dedup();
    let existing: Vec<AccountRow> = sqlx::query_as(
        "SELECT account_id, owner, currency, balance, held, overdraft_limit, max_balance,
                metadata, status, version, opened_at, updated_at, feed_position
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
    let mut system: HashMap<String, SystemDelta> = HashMap::new();

    for (index, event) in events.iter().enumerate() {
        let feed_position = order.position(index);
        let payload = domain::account::upcast::read_event(
            &event.event_type,
            &event.event_version,
            &event.payload,
        )
        .map_err(|e| ApplyError::poison(event, format!("unreadable payload: {e}")))?;
        let sequence = i64::try_from(event.sequence)
            .map_err(|_| ApplyError::poison(event, "sequence out of range"))?;
        if let AccountEvent::AccountOpened(opened) = &payload {
            let metadata = serde_json::to_value(&opened.metadata)
                .map_err(|e| ApplyError::poison(event, format!("metadata: {e}")))?;
            rows.insert(
                event.aggregate_id.clone(),
                AccountRow {
                    account_id: event.aggregate_id.clone(),
                    owner: opened.owner.clone(),
                    currency: opened.currency.clone(),
                    balance: 0,
                    held: 0,
                    overdraft_limit: 0,
                    max_balance: None,
                    metadata,
                    status: "open".into(),
                    version: sequence,
                    opened_at: event.recorded_at,
                    updated_at: event.recorded_at,
                    feed_position,
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
        // The system accounts' side of the movement, derived as every reader derives it.
        for posting in postings::of_account_event(&event.aggregate_id, &row.currency, &payload) {
            if SystemAccount::is_system_id(&posting.account) {
                system
                    .entry(posting.account)
                    .or_insert_with(|| SystemDelta {
                        currency: posting.currency,
                        balance: 0,
                    })
                    .balance += i128::from(posting.amount);
            }
        }
        let command_id = event
            .metadata
            .get("command_id")
            .and_then(|v| v.as_str())
            .and_then(|s| uuid::Uuid::parse_str(s).ok())
            .unwrap_or_default();
        let delta = deltas.entry(row.currency.clone()).or_default();
        let movement =
            fold(row, delta, payload).map_err(|reason| ApplyError::poison(event, reason))?;
        if let Some((direction, amount, reference, balance_after, transfer_id, transaction)) =
            movement
        {
            row.balance = balance_after;
            delta.balance += if direction == "credit" {
                i128::from(amount)
            } else {
                -i128::from(amount)
            };
            let (transaction_id, legs) = transaction.unzip();
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
                transaction_id,
                legs,
                feed_position,
            });
        }
        row.version = sequence;
        row.updated_at = event.recorded_at;
        row.feed_position = feed_position;
    }

    // Sorted, so concurrent transactions lock rows in the same order (no deadlocks).
    // Every row here changed in this batch (only the batch's accounts were read).
    let mut rows: Vec<AccountRow> = rows.into_values().collect();
    rows.sort_unstable_by(|a, b| a.account_id.cmp(&b.account_id));
    let changed: Vec<Changed> = rows
        .iter()
        .map(|r| Changed {
            account_id: r.account_id.clone(),
            owner: r.owner.clone(),
        })
        .collect();
    let to = events
        .len()
        .checked_sub(1)
        .and_then(|last| order.position(last));
    write::write(tx, rows, entries, deltas, system, partition).await?;
    if order != FeedOrder::Rebuild {
        notify::announce(tx, partition, to, &changed).await?;
    }
    Ok(())
}

/// Folds one event (not `AccountOpened`) into its row: the changes that are not a movement
/// happen here; a movement is returned for the caller to record.
fn fold(
    row: &mut AccountRow,
    delta: &mut CurrencyDelta,
    payload: AccountEvent,
) -> Result<Option<Movement>, String> {
    Ok(match payload {
        AccountEvent::AccountOpened(_) => None,
        AccountEvent::MoneyDeposited(e) => {
            Some(("credit", e.amount, e.reference, e.balance_after, None, None))
        }
        AccountEvent::MoneyWithdrawn(e) => {
            Some(("debit", e.amount, e.reference, e.balance_after, None, None))
        }
        AccountEvent::TransferDebited(e) => Some((
            "debit",
            e.amount,
            format!("transfer to {}", e.to),
            e.balance_after,
            Some(e.transfer_id),
            None,
        )),
        AccountEvent::TransferCredited(e) => Some((
            "credit",
            e.amount,
            format!("transfer from {}", e.from),
            e.balance_after,
            Some(e.transfer_id),
            None,
        )),
        AccountEvent::TransferRefunded(e) => Some((
            "credit",
            e.amount,
            "refund of a failed transfer".to_owned(),
            e.balance_after,
            Some(e.transfer_id),
            None,
        )),
        AccountEvent::TransferSettled(_) => None,
        AccountEvent::LegsPosted(e) => Some(legs_posted(e)?),
        AccountEvent::FundsHeld(e) => {
            row.held = row
                .held
                .checked_add(e.amount)
                .ok_or("held amount overflows")?;
            None
        }
        AccountEvent::FundsReleased(e) => {
            row.held = row
                .held
                .checked_sub(e.amount)
                .filter(|held| *held >= 0)
                .ok_or("funds released that were not held")?;
            None
        }
        AccountEvent::LimitsSet(e) => {
            row.overdraft_limit = e.overdraft_limit;
            row.max_balance = e.max_balance;
            None
        }
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
    })
}

/// One entry for all the legs of a transaction that touch the account: the net amount, and
/// the legs (other side, signed amount) for statements.
fn legs_posted(e: LegsPosted) -> Result<Movement, String> {
    let net = e
        .legs
        .iter()
        .try_fold(0i64, |sum, leg| sum.checked_add(leg.amount))
        .ok_or("legs overflow")?;
    let reference = match e.legs.as_slice() {
        [leg] if leg.amount < 0 => format!("transaction to {}", leg.counterparty),
        [leg] => format!("transaction from {}", leg.counterparty),
        legs => format!("transaction of {} legs", legs.len()),
    };
    let legs: Vec<serde_json::Value> = e
        .legs
        .iter()
        .map(|leg| {
            serde_json::json!({
                "leg": leg.leg,
                "counterparty": leg.counterparty,
                "amount": leg.amount,
            })
        })
        .collect();
    Ok((
        if net >= 0 { "credit" } else { "debit" },
        net.checked_abs().ok_or("net amount out of range")?,
        reference,
        e.balance_after,
        None,
        Some((e.transaction_id, serde_json::Value::Array(legs))),
    ))
}
