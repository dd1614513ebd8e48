//! Our own aggregate snapshots (cqrs-es's snapshot modes corrupt state in 0.5.0).
//!
//! A snapshot is a cache of the state after `last_sequence`: loading reads it, then only the
//! events after it. It is written after the command's events commit, never instead of them, so
//! losing or skipping one only costs load time.

use cqrs_es::Aggregate;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgPool;

use crate::StoreError;

/// Bumped whenever an aggregate's state layout changes: older snapshots are then ignored and
/// the state is rebuilt from events.
/// 2: accounts gained `transfers_in_flight`.
pub const STATE_VERSION: i32 = 2;

#[derive(Debug)]
pub struct Snapshot<A> {
    pub last_sequence: usize,
    pub state: A,
}

pub async fn load<A: Aggregate + DeserializeOwned>(
    pool: &PgPool,
    aggregate_id: &str,
) -> Result<Option<Snapshot<A>>, StoreError> {
    let row = sqlx::query!(
        "SELECT last_sequence, payload FROM aggregate_snapshots
         WHERE aggregate_type = $1 AND aggregate_id = $2 AND state_version = $3",
        A::TYPE,
        aggregate_id,
        STATE_VERSION,
    )
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (last_sequence, payload) = (row.last_sequence, row.payload);
    // An unreadable snapshot is ignored: the events are the truth.
    let (Ok(last_sequence), Ok(state)) = (
        usize::try_from(last_sequence),
        serde_json::from_value::<A>(payload),
    ) else {
        tracing::warn!(aggregate_id, "ignoring an unreadable snapshot");
        return Ok(None);
    };
    Ok(Some(Snapshot {
        last_sequence,
        state,
    }))
}

/// Whether crossing from `before` to `after` passes a multiple of `every`.
pub fn due(before: usize, after: usize, every: u64) -> bool {
    let Ok(every) = usize::try_from(every) else {
        return false;
    };
    every > 0 && after / every > before / every
}

/// Stores `state` as of `last_sequence`, unless a newer snapshot is already there.
pub async fn save<A: Aggregate + Serialize>(
    pool: &PgPool,
    aggregate_id: &str,
    last_sequence: usize,
    state: &A,
) -> Result<(), StoreError> {
    let payload = serde_json::to_value(state)
        .map_err(|e| StoreError::internal("serialising a snapshot", e))?;
    let last_sequence = i64::try_from(last_sequence)
        .map_err(|e| StoreError::internal("a snapshot's sequence", e))?;
    sqlx::query!(
        "INSERT INTO aggregate_snapshots (aggregate_type, aggregate_id, last_sequence, state_version, payload)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
           SET last_sequence = EXCLUDED.last_sequence, state_version = EXCLUDED.state_version,
               payload = EXCLUDED.payload, taken_at = now()
           WHERE aggregate_snapshots.last_sequence < EXCLUDED.last_sequence
              OR aggregate_snapshots.state_version <> EXCLUDED.state_version",
        A::TYPE,
        aggregate_id,
        last_sequence,
        STATE_VERSION,
        payload,
    )
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::due;

    #[test]
    fn due_when_crossing_a_multiple() {
        assert!(due(99, 100, 100));
        assert!(due(98, 101, 100));
        assert!(!due(100, 101, 100));
        assert!(!due(1, 2, 0));
        assert!(due(0, 1, 1));
    }
}
