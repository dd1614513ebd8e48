//! `projection_versions`: the last event sequence a projection applied per aggregate, and the
//! projection's checkpoint beside it.

use sqlx::PgConnection;

/// Records `(aggregate id, version)` pairs of `projection`'s aggregates. Callers pass
/// them sorted by id, so concurrent transactions lock the rows in the same order.
pub async fn record(
    conn: &mut PgConnection,
    projection: crate::Projection,
    ids: &[&str],
    versions: &[i64],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_versions (projection, aggregate_type, aggregate_id, version)
         SELECT $1, $4, id, v FROM UNNEST($2::text[], $3::bigint[]) AS t(id, v)
         ON CONFLICT (projection, aggregate_type, aggregate_id) DO UPDATE SET version = EXCLUDED.version",
    )
    .bind(projection.name())
    .bind(ids)
    .bind(versions)
    .bind(projection.aggregate_type())
    .execute(conn)
    .await?;
    Ok(())
}

/// Versions moved from `previous[i]` (0: none yet) to `versions[i]` for `ids[i]`, and the
/// partition's checkpoint (the highest stream sequence applied, and how many events were), in
/// one statement: one round trip per batch.
///
/// A compare-and-set: an aggregate's version moves only from the one this batch read. Normally
/// the partition's apply lock already makes the batch its only writer; when it does not (the
/// partition count changed while events of one aggregate were in flight in two partitions,
/// or a release raced), the later writer sees `false` and must roll back.
#[allow(clippy::too_many_arguments)]
pub async fn record_with_checkpoint(
    conn: &mut PgConnection,
    projection: crate::Projection,
    partition: u32,
    ids: &[&str],
    previous: &[i64],
    versions: &[i64],
    stream_sequence: i64,
    events_applied: i64,
) -> Result<Recorded, sqlx::Error> {
    let (moved, events_applied_after): (i64, i64) = sqlx::query_as(
        "WITH input AS (
             SELECT * FROM UNNEST($2::text[], $3::bigint[], $7::bigint[]) AS t(id, v, old)
         ), updated AS (
             UPDATE projection_versions p SET version = i.v
             FROM input i
             WHERE p.projection = $1 AND p.aggregate_type = $4 AND p.aggregate_id = i.id
               AND i.old > 0 AND p.version = i.old
             RETURNING 1
         ), inserted AS (
             INSERT INTO projection_versions (projection, aggregate_type, aggregate_id, version)
             SELECT $1, $4, id, v FROM input WHERE old = 0
             ON CONFLICT (projection, aggregate_type, aggregate_id) DO NOTHING
             RETURNING 1
         ), checkpoint AS (
             INSERT INTO projection_partition_checkpoints (projection, partition, stream_sequence, events_applied)
             VALUES ($1, $8, $5, $6)
             ON CONFLICT (projection, partition) DO UPDATE SET
                 stream_sequence = GREATEST(projection_partition_checkpoints.stream_sequence, EXCLUDED.stream_sequence),
                 events_applied = projection_partition_checkpoints.events_applied + EXCLUDED.events_applied,
                 updated_at = now()
             RETURNING events_applied
         )
         SELECT (SELECT count(*) FROM updated) + (SELECT count(*) FROM inserted),
                (SELECT events_applied FROM checkpoint)",
    )
    .bind(projection.name())
    .bind(ids)
    .bind(versions)
    .bind(projection.aggregate_type())
    .bind(stream_sequence)
    .bind(events_applied)
    .bind(previous)
    .bind(i32::try_from(partition).unwrap_or(i32::MAX))
    .fetch_one(conn)
    .await?;
    Ok(Recorded {
        moved: usize::try_from(moved).is_ok_and(|m| m == ids.len()),
        first_position: events_applied_after - events_applied + 1,
    })
}

/// What `record_with_checkpoint` did.
#[derive(Debug, Clone, Copy)]
pub struct Recorded {
    /// Every aggregate moved from the version the batch read (no other writer came between).
    pub moved: bool,
    /// The partition's count of applied events before this batch, plus one: the feed position
    /// of the batch's first event (strictly increasing in the partition's commit order).
    pub first_position: i64,
}
