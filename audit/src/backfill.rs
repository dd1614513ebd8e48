//! Hashes for event rows written before the chain existed (migration 0005 adds the column
//! empty). The command-service runs this at start, before it takes commands.
//!
//! Per aggregate, only the unhashed rows after its last hashed row are filled in, continuing
//! that row's chain (or from genesis). An unhashed row *followed* by hashed ones is left alone:
//! the writer of those restarted the chain at genesis after it, and hashing it now would break
//! their links; `tally audit verify` reports it as unchained. The event store does each
//! aggregate (`event_store::audit::hash_unchained_tail`).

use event_store::StoreError;
use sqlx::PgPool;

/// Aggregates handled per call of the key query, so memory stays bounded on a huge backlog.
const AGGREGATES_PER_ROUND: i64 = 1_000;

/// Fills in missing hashes; returns how many rows it hashed.
pub async fn backfill(pool: &PgPool) -> Result<u64, StoreError> {
    let mut hashed = 0;
    let mut after = (String::new(), String::new());
    loop {
        let keys = event_store::audit::unhashed_aggregates(
            pool,
            (&after.0, &after.1),
            AGGREGATES_PER_ROUND,
        )
        .await?;
        let Some(last) = keys.last().cloned() else {
            return Ok(hashed);
        };
        for (aggregate_type, aggregate_id) in keys {
            hashed += event_store::audit::hash_unchained_tail(pool, &aggregate_type, &aggregate_id)
                .await?;
        }
        after = last;
    }
}
