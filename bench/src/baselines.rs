//! The machine's limits, measured in the same run as Tally so the report can state Tally as a
//! fraction of them: event-shaped rows inserted into the stack's own PostgreSQL (a copy of the
//! `events` table's shape, indexes included, same durability settings), and same-size messages
//! published with the same dedup headers to a stream configured exactly as `TALLY_EVENTS`.

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::json;
use uuid::Uuid;

/// Rows per transaction in the batched insert baseline.
pub const BATCH_ROWS: usize = 10;
/// Publishes awaiting their ack at once in the JetStream baseline.
const PUBLISH_WINDOW: usize = 256;

/// A scratch table shaped like `events`; dropped by [`drop_table`].
pub async fn create_table(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    event_store::maintenance::create_events_shaped(pool, "bench_baseline").await?;
    Ok(())
}

pub async fn drop_table(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    sqlx::query("DROP TABLE IF EXISTS bench_baseline")
        .execute(pool)
        .await?;
    Ok(())
}

/// Rows per second inserted by `clients` connections for `seconds`, `rows_per_tx` rows per
/// transaction (one statement).
pub async fn postgres_inserts(
    pool: &sqlx::PgPool,
    clients: usize,
    seconds: u64,
    rows_per_tx: usize,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients.max(1) {
        let pool = pool.clone();
        tasks.spawn(async move {
            let aggregate_id = format!("{}-{c}", Uuid::new_v4());
            let command_id = Uuid::new_v4().to_string();
            let mut sequence = 0i64;
            while Instant::now() < deadline {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO bench_baseline (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) ",
                );
                insert.push_values(0..rows_per_tx.max(1), |mut row, _| {
                    sequence += 1;
                    row.push_bind("account")
                        .push_bind(&aggregate_id)
                        .push_bind(sequence)
                        .push_bind("MoneyDeposited")
                        .push_bind("2.0")
                        .push_bind(json!({"MoneyDeposited": {"amount": 1, "reference": "", "balance_after": sequence, "channel": "unspecified"}}))
                        .push_bind(json!({"command_id": command_id, "actor": "bench", "correlation_id": command_id, "causation_id": command_id}));
                });
                insert.build().execute(&pool).await?;
            }
            Ok::<i64, sqlx::Error>(sequence)
        });
    }
    let mut rows = 0;
    while let Some(done) = tasks.join_next().await {
        rows += done
            .context("baseline client panicked")?
            .context("baseline insert")?;
    }
    Ok(rows as f64 / seconds as f64)
}

/// Messages per second published to a stream configured as `TALLY_EVENTS` (file storage, the
/// same dedup window), each with a unique `Nats-Msg-Id`, `PUBLISH_WINDOW` acks outstanding.
pub async fn jetstream_publishes(
    nats_url: &str,
    message_bytes: usize,
    seconds: u64,
) -> anyhow::Result<f64> {
    let client = async_nats::connect(nats_url).await?;
    let js = jetstream::new(client);
    let subjects = platform::nats::Subjects::new("bench")?;
    let streams = platform::nats::ensure_streams(&js, &subjects, 1).await?;
    let payload = bytes::Bytes::from(vec![b'x'; message_bytes]);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut pending = FuturesUnordered::new();
    let mut acked = 0u64;
    let mut i = 0u64;
    while Instant::now() < deadline {
        while pending.len() < PUBLISH_WINDOW {
            i += 1;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                "Nats-Msg-Id",
                format!("account:bench-{}:{i}", i % 1000).as_str(),
            );
            headers.insert("Tally-Event-Type", "MoneyDeposited");
            let ack = js
                .publish_with_headers(
                    subjects.event("account", &format!("bench-{}", i % 1000)),
                    headers,
                    payload.clone(),
                )
                .await?;
            pending.push(ack.into_future());
        }
        if let Some(ack) = pending.next().await {
            ack?;
            acked += 1;
        }
    }
    while let Some(ack) = pending.next().await {
        ack?;
    }
    let _ = js.delete_stream(&streams.events).await;
    Ok(acked as f64 / seconds as f64)
}
