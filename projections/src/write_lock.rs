//! The lock between a projection's live writers and its rebuild's swap.
//!
//! Every transaction that writes a projection's tables takes this lock shared, first thing;
//! the rebuild's swap takes it exclusive, so it waits for in-flight batches to commit and holds
//! new ones back for the few milliseconds the swap takes. Transaction-scoped: a crash releases it.

use sqlx::PgConnection;

/// Namespace of the lock key, so it cannot collide with the relay's or the migrator's locks.
const NAMESPACE: &str = "tally.projection.write";

pub async fn shared(conn: &mut PgConnection, projection: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock_shared(hashtextextended($1 || ':' || $2, 0))")
        .bind(NAMESPACE)
        .bind(projection)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn exclusive(conn: &mut PgConnection, projection: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || $2, 0))")
        .bind(NAMESPACE)
        .bind(projection)
        .execute(conn)
        .await?;
    Ok(())
}
