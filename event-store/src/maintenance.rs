//! What tools (the bench, operators' scripts) do to the tables as a whole: their size, a
//! scratch copy of `events`' shape, fresh planner statistics.

use sqlx::PgPool;

use crate::StoreError;

/// The average size of a stored event's payload and metadata as text (the size of what the
/// relay publishes, give or take its headers); `None` when there is no event.
pub async fn average_event_bytes(pool: &PgPool) -> Result<Option<f64>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT avg(octet_length(payload::text) + octet_length(metadata::text))::float8 FROM events"
    )
    .fetch_one(pool)
    .await?)
}

/// Creates (or recreates) `table`, empty, in `events`' shape: columns, defaults, identity and
/// indexes. For measuring what the machine allows on the same kind of rows.
pub async fn create_events_shaped(pool: &PgPool, table: &str) -> Result<(), StoreError> {
    let table = quoted(table)?;
    sqlx::raw_sql(&format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (LIKE events INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING INDEXES)"
    ))
    .execute(pool)
    .await?;
    Ok(())
}

/// Fresh planner statistics (and visibility map) for `events`, after a bulk load.
pub async fn vacuum_analyze(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::raw_sql("VACUUM ANALYZE events").execute(pool).await?;
    Ok(())
}

/// `name` as an SQL identifier: lower-case letters, digits and underscores only.
fn quoted(name: &str) -> Result<String, StoreError> {
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !plain {
        return Err(StoreError::corrupt(format!("a table name `{name}`")));
    }
    Ok(format!("\"{name}\""))
}
