//! `projection_versions`: the last event sequence a projection applied per aggregate.

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
