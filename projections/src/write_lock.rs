//! The locks of a projection's writers.
//!
//! The write lock is between the live writers and the rebuild's swap: every transaction that
//! writes a projection's tables takes it shared, first thing; the rebuild's swap takes it
//! exclusive, so it waits for in-flight batches to commit and holds new ones back for the few
//! milliseconds the swap takes.
//!
//! The apply lock is between the live writers themselves (a worker and a standby during a
//! hand-over, a dead-letter release): one at a time per projection. It replaces row locks on
//! what a batch reads, which took a transaction id at the batch's first statement; the relay
//! publishes nothing committed after the oldest transaction id still running began, so a batch
//! holding one from its first read held every event behind it for the batch's whole length.
//! Advisory locks take no transaction id. Both are transaction-scoped: a crash releases them.

use sqlx::PgConnection;

/// Namespace of the lock key, so it cannot collide with the relay's or the migrator's locks.
const NAMESPACE: &str = "tally.projection.write";
const APPLY_NAMESPACE: &str = "tally.projection.apply";

/// The write lock shared and the apply lock exclusive, in one round trip: what every live
/// writer of `projection`'s tables takes first.
pub async fn apply(conn: &mut PgConnection, projection: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock_shared(hashtextextended($1 || ':' || $3, 0)),
                pg_advisory_xact_lock(hashtextextended($2 || ':' || $3, 0))",
    )
    .bind(NAMESPACE)
    .bind(APPLY_NAMESPACE)
    .bind(projection)
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
