//! A generated event store: accounts of one `AccountOpened` and nine deposits, hash-chained and written by
//! the event store's own write path; every tenth account's deposits stored as version 1.0.

use chrono::{Duration, TimeZone, Utc};
use event_store::{Append, EventStore, NewEvent, StoreError};
use serde_json::{Value, json};
use sqlx::PgPool;

/// Accounts per write (ten events each).
const ACCOUNTS_PER_BATCH: u64 = 1_000;

fn event(
    id: &str,
    sequence: u64,
    kind: &str,
    version: &str,
    payload: Value,
    metadata: Value,
) -> NewEvent {
    NewEvent {
        aggregate_type: "account",
        aggregate_id: id.to_owned(),
        sequence,
        event_type: kind.to_owned(),
        event_version: version.to_owned(),
        payload,
        metadata,
    }
}

/// Writes `accounts` accounts; returns the number of events.
pub async fn events(pool: &PgPool, accounts: u64) -> Result<u64, StoreError> {
    // The store's own write path: its chain hashes, its statement.
    let store = EventStore::new(pool.clone());
    let epoch = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .ok_or_else(|| StoreError::corrupt("the generator's epoch"))?;
    let mut written = 0;
    let mut start = 0;
    while start < accounts {
        let end = (start + ACCOUNTS_PER_BATCH).min(accounts);
        let mut aggregates = Vec::new();
        for a in start..end {
            let id = format!("bench-{a:08}");
            let legacy = a % 10 == 0;
            let at = epoch + Duration::milliseconds(i64::try_from(a).unwrap_or(0));
            let metadata = |n: i64| {
                serde_json::to_value(
                    domain::EventMetadata::for_command(
                        uuid::Uuid::new_v4(),
                        "bench",
                        at + Duration::microseconds(n),
                    )
                    .to_map(),
                )
                .map_err(|e| StoreError::internal("generated metadata", e))
            };
            let currency = if a % 2 == 0 { "EUR" } else { "USD" };
            let mut history = vec![event(
                &id,
                1,
                "AccountOpened",
                "1.0",
                json!({"AccountOpened": {"account_id": id, "owner": "bench", "currency": currency}}),
                metadata(1)?,
            )];
            for n in 2..=10i64 {
                let balance = (n - 1) * 100;
                let (version, payload) = if legacy {
                    (
                        "1.0",
                        json!({"MoneyDeposited": {"amount": 100, "reference": "bench", "balance_after": balance}}),
                    )
                } else {
                    (
                        "2.0",
                        json!({"MoneyDeposited": {"amount": 100, "reference": "bench", "balance_after": balance, "channel": "card"}}),
                    )
                };
                history.push(event(
                    &id,
                    n.unsigned_abs(),
                    "MoneyDeposited",
                    version,
                    payload,
                    metadata(n)?,
                ));
            }
            aggregates.push(history);
        }
        written += aggregates.iter().map(Vec::len).sum::<usize>() as u64;
        store
            .append(Append {
                aggregates,
                log: Vec::new(),
            })
            .await?;
        start = end;
    }
    Ok(written)
}
