//! The locks of a projection's writers.
//!
//! The write lock is between the live writers and the rebuild's swap: every transaction that
//! writes a projection's tables takes it shared, first thing; the rebuild's swap takes it
//! exclusive, so it waits for in-flight batches to commit and holds new ones back for the few
//! milliseconds the swap takes.
//!
//! The apply lock is between the live writers of one partition of a projection (the partition's
//! owner and a worker still finishing a batch after losing it, a dead-letter release): one at a
//! time per (projection, partition), so partitions commit in parallel. It replaces row locks on
//! what a batch reads, which took a transaction id at the batch's first statement; the relay
//! publishes nothing committed after the oldest transaction id still running began, so a batch
//! holding one from its first read held every event behind it for the batch's whole length.
//! Writers of different partitions never touch one aggregate's rows (an aggregate's events all
//! hash to one partition); where they could (the partition count changed), the versions'
//! compare-and-set (`versions::record_with_checkpoint`) refuses the later writer.
//! Advisory locks take no transaction id. Both are transaction-scoped: a crash releases them.

use sqlx::PgConnection;

/// Namespace of the lock key, so it cannot collide with the relay's or the migrator's locks.
const NAMESPACE: &str = "tally.projection.write";
const APPLY_NAMESPACE: &str = "tally.projection.apply";

/// The write lock shared and the partition's apply lock exclusive, in one round trip: what
/// every live writer of `projection`'s tables takes first.
pub async fn apply(
    conn: &mut PgConnection,
    projection: &str,
    partition: u32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock_shared(hashtextextended($1 || ':' || $3, 0)),
                pg_advisory_xact_lock(hashtextextended($2 || ':' || $3 || ':' || $4, 0))",
    )
    .bind(NAMESPACE)
    .bind(APPLY_NAMESPACE)
    .bind(projection)
    .bind(i64::from(partition))
    .execute(conn)
    .await?;
    Ok(())
}

/// The write lock shared and the apply locks of partitions `0..partitions`, in ascending order
/// (a writer of one partition holds one, so no cycle): a writer that may touch any aggregate,
/// the dead-letter release.
pub async fn apply_all(
    conn: &mut PgConnection,
    projection: &str,
    partitions: u32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock_shared(hashtextextended($1 || ':' || $3, 0)),
                (SELECT count(pg_advisory_xact_lock(hashtextextended($2 || ':' || $3 || ':' || k, 0)))
                 FROM (SELECT k FROM generate_series(0, $4 - 1) AS k ORDER BY k) ks)",
    )
    .bind(NAMESPACE)
    .bind(APPLY_NAMESPACE)
    .bind(projection)
    .bind(i64::from(partitions.max(1)))
    .execute(conn)
    .await?;
    Ok(())
}

/// The write lock exclusive: the rebuild's swap.
pub async fn exclusive(conn: &mut PgConnection, projection: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || $2, 0))")
        .bind(NAMESPACE)
        .bind(projection)
        .execute(conn)
        .await?;
    Ok(())
}
