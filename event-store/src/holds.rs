//! Holds whose expiry has passed and that nothing has ended yet: the expiry worker's to-do
//! list, read from the events themselves (a hold's first event states its expiry; any later
//! event ends it), so there is no schedule to keep in step with them.
//!
//! Expiries are stored to the second as `YYYY-MM-DDTHH:MM:SSZ`
//! (`domain::ledger::hold::whole_second_after`), so their text sorts as their time and the
//! partial index of migration 0011 serves the range.

use sqlx::PgPool;

use crate::StoreError;

/// A hold due to expire: its id and its expiry as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LapsedHold {
    pub hold_id: String,
    pub expires_at: String,
}

/// Up to `limit` unended holds expiring in `[from, until]` (both as stored text), earliest
/// first.
pub async fn lapsed(
    pool: &PgPool,
    from: &str,
    until: &str,
    limit: i64,
) -> Result<Vec<LapsedHold>, StoreError> {
    // The predicate repeats the partial index's (`aggregate_type`, `event_type`) so the planner
    // can use it; the NOT EXISTS probes the primary key.
    let rows = sqlx::query_as::<_, LapsedHold>(
        "SELECT placed.aggregate_id AS hold_id,
                placed.payload->'HoldPlaced'->>'expires_at' AS expires_at
           FROM events placed
          WHERE placed.aggregate_type = 'hold' AND placed.event_type = 'HoldPlaced'
            AND placed.payload->'HoldPlaced'->>'expires_at' >= $1
            AND placed.payload->'HoldPlaced'->>'expires_at' <= $2
            AND NOT EXISTS (
                SELECT 1 FROM events ended
                 WHERE ended.aggregate_type = 'hold'
                   AND ended.aggregate_id = placed.aggregate_id
                   AND ended.sequence > placed.sequence)
          ORDER BY placed.payload->'HoldPlaced'->>'expires_at'
          LIMIT $3",
    )
    .bind(from)
    .bind(until)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}
