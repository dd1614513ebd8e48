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

/// [`record`], and the projection's checkpoint (the highest stream sequence applied, and how
/// many events were), in one statement: one round trip per batch rather than two.
pub async fn record_with_checkpoint(
    conn: &mut PgConnection,
    projection: crate::Projection,
    ids: &[&str],
    versions: &[i64],
    stream_sequence: i64,
    events_applied: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH recorded AS (
             INSERT INTO projection_versions (projection, aggregate_type, aggregate_id, version)
             SELECT $1, $4, id, v FROM UNNEST($2::text[], $3::bigint[]) AS t(id, v)
             ON CONFLICT (projection, aggregate_type, aggregate_id) DO UPDATE SET version = EXCLUDED.version
         )
         INSERT INTO projection_checkpoints (projection, stream_sequence, events_applied)
         VALUES ($1, $5, $6)
         ON CONFLICT (projection) DO UPDATE SET
             stream_sequence = GREATEST(projection_checkpoints.stream_sequence, EXCLUDED.stream_sequence),
             events_applied = projection_checkpoints.events_applied + EXCLUDED.events_applied,
             updated_at = now()",
    )
    .bind(projection.name())
    .bind(ids)
    .bind(versions)
    .bind(projection.aggregate_type())
    .bind(stream_sequence)
    .bind(events_applied)
    .execute(conn)
    .await?;
    Ok(())
}
