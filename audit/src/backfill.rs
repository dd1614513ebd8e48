//! Hashes for event rows written before the chain existed (migration 0005 adds the column
//! empty). The command-service runs this at start, before it takes commands.
//!
//! Per aggregate, only the unhashed rows after its last hashed row are filled in, continuing
//! that row's chain (or from genesis). An unhashed row *followed* by hashed ones is left alone:
//! the writer of those restarted the chain at genesis after it (see `TallyRepository`), and
//! hashing it now would break their links; `tally audit verify` reports it as unchained.

use domain::hash_chain::{self, ChainHash};
use sqlx::PgPool;

use crate::StoredEvent;
use crate::stored_event::COLUMNS;

/// Aggregates handled per call of the key query, so memory stays bounded on a huge backlog.
const AGGREGATES_PER_ROUND: i64 = 1_000;

/// Fills in missing hashes; returns how many rows it hashed.
pub async fn backfill(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut hashed = 0;
    let mut after = (String::new(), String::new());
    loop {
        // Served by the partial index `events_unhashed`: instant when nothing is missing.
        let keys: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT aggregate_type, aggregate_id FROM events
             WHERE hash IS NULL AND (aggregate_type, aggregate_id) > ($1, $2)
             ORDER BY aggregate_type, aggregate_id LIMIT $3",
        )
        .bind(&after.0)
        .bind(&after.1)
        .bind(AGGREGATES_PER_ROUND)
        .fetch_all(pool)
        .await?;
        let Some(last) = keys.last().cloned() else {
            return Ok(hashed);
        };
        for (aggregate_type, aggregate_id) in keys {
            hashed += backfill_aggregate(pool, &aggregate_type, &aggregate_id).await?;
        }
        after = last;
    }
}

async fn backfill_aggregate(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let events: Vec<StoredEvent> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM events WHERE aggregate_type = $1 AND aggregate_id = $2
         ORDER BY sequence FOR UPDATE"
    ))
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_all(&mut *tx)
    .await?;
    let tail_start = events
        .iter()
        .rposition(|e| e.hash.is_some())
        .map_or(0, |i| i + 1);
    let mut prev: ChainHash = tail_start
        .checked_sub(1)
        .and_then(|i| events[i].hash.as_deref())
        .and_then(|h| ChainHash::try_from(h).ok())
        .unwrap_or(hash_chain::GENESIS);
    let mut sequences = Vec::new();
    let mut hashes = Vec::new();
    for event in &events[tail_start..] {
        prev = hash_chain::event_hash(&prev, &event.chained());
        sequences.push(event.sequence);
        hashes.push(prev.to_vec());
    }
    sqlx::query(
        "UPDATE events SET hash = t.hash
         FROM UNNEST($3::bigint[], $4::bytea[]) AS t(sequence, hash)
         WHERE events.aggregate_type = $1 AND events.aggregate_id = $2
           AND events.sequence = t.sequence AND events.hash IS NULL",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(&sequences)
    .bind(&hashes)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(sequences.len() as u64)
}
