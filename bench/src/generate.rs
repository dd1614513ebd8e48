//! A generated event store: accounts of one `AccountOpened` and nine deposits, hash-chained as
//! `TallyRepository` writes them; every tenth account's deposits stored as version 1.0.

use chrono::{Duration, TimeZone, Utc};
use domain::hash_chain::{self, ChainedEvent};
use serde_json::{Value, json};
use sqlx::PgPool;

/// Accounts per INSERT (ten events each).
const ACCOUNTS_PER_BATCH: u64 = 1_000;

#[derive(Debug, Default)]
struct Columns {
    ids: Vec<String>,
    sequences: Vec<i64>,
    types: Vec<&'static str>,
    versions: Vec<&'static str>,
    payloads: Vec<Value>,
    metadatas: Vec<Value>,
    hashes: Vec<Vec<u8>>,
    /// The chain head of the account being written.
    prev: hash_chain::ChainHash,
}

impl Columns {
    fn push(
        &mut self,
        id: &str,
        sequence: i64,
        kind: &'static str,
        version: &'static str,
        payload: Value,
        metadata: Value,
    ) {
        let hash = hash_chain::event_hash(
            &self.prev,
            &ChainedEvent {
                aggregate_type: "account",
                aggregate_id: id,
                sequence: u64::try_from(sequence).unwrap_or(0),
                event_type: kind,
                event_version: version,
                payload: &payload,
                metadata: &metadata,
            },
        );
        self.prev = hash;
        self.ids.push(id.to_owned());
        self.sequences.push(sequence);
        self.types.push(kind);
        self.versions.push(version);
        self.payloads.push(payload);
        self.metadatas.push(metadata);
        self.hashes.push(hash.to_vec());
    }
}

/// Writes `accounts` accounts; returns the number of events.
pub async fn events(pool: &PgPool, accounts: u64) -> Result<u64, sqlx::Error> {
    let epoch = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    let mut written = 0;
    let mut start = 0;
    while start < accounts {
        let end = (start + ACCOUNTS_PER_BATCH).min(accounts);
        let mut c = Columns::default();
        for a in start..end {
            let id = format!("bench-{a:08}");
            let legacy = a % 10 == 0;
            c.prev = hash_chain::GENESIS;
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
                .unwrap_or_default()
            };
            let currency = if a % 2 == 0 { "EUR" } else { "USD" };
            c.push(&id, 1, "AccountOpened", "1.0", json!({"AccountOpened": {"account_id": id, "owner": "bench", "currency": currency}}), metadata(1));
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
                c.push(&id, n, "MoneyDeposited", version, payload, metadata(n));
            }
        }
        written += c.ids.len() as u64;
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, hash)
             SELECT 'account', * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[], $7::bytea[])",
        )
        .bind(&c.ids)
        .bind(&c.sequences)
        .bind(&c.types)
        .bind(&c.versions)
        .bind(&c.payloads)
        .bind(&c.metadatas)
        .bind(&c.hashes)
        .execute(pool)
        .await?;
        start = end;
    }
    Ok(written)
}
