//! Reads the event store for rebuilds: events between two commit-safe horizons, in
//! `global_position` order, as the `EventMessage`s the projections apply.

use domain::envelope::EventMessage;
use sqlx::PgConnection;

/// The commit-safe horizon: every transaction below it has ended, so the events below it are
/// final, and a later horizon only adds events after them (per aggregate).
pub async fn current_horizon(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        .fetch_one(conn)
        .await
}

/// All events below a horizon: one scan in `global_position` order.
pub const ALL_BELOW_SQL: &str =
    "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version,
        global_position, recorded_at, payload, metadata
    FROM events
    WHERE aggregate_type = $3 AND tx_id >= $1::text::xid8 AND tx_id < $2::text::xid8
    ORDER BY global_position";

/// The (usually few) events between two horizons: found through the `tx_id` index first, then
/// sorted. Planned as the query above, PostgreSQL walks the whole table in `global_position`
/// order to find a handful of rows, and the swap (which runs this under the write lock) took
/// over a second on a million events.
pub const BETWEEN_SQL: &str = "WITH tail AS MATERIALIZED (
        SELECT aggregate_type, aggregate_id, sequence, event_type, event_version,
            global_position, recorded_at, payload, metadata
        FROM events
        WHERE tx_id >= $1::text::xid8 AND tx_id < $2::text::xid8 AND aggregate_type = $3)
    SELECT * FROM tail ORDER BY global_position";

/// The query for `[from, to)`: a full copy starts at horizon 0.
pub fn range_sql(from: &str) -> &'static str {
    if from == "0" {
        ALL_BELOW_SQL
    } else {
        BETWEEN_SQL
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct Row {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    global_position: i64,
    recorded_at: chrono::DateTime<chrono::Utc>,
    payload: serde_json::Value,
    metadata: serde_json::Value,
}

impl From<Row> for EventMessage {
    fn from(row: Row) -> Self {
        EventMessage {
            aggregate_type: row.aggregate_type,
            aggregate_id: row.aggregate_id,
            sequence: u64::try_from(row.sequence).unwrap_or(0),
            event_type: row.event_type,
            event_version: row.event_version,
            global_position: row.global_position,
            recorded_at: row.recorded_at,
            payload: row.payload,
            metadata: row.metadata,
        }
    }
}

pub async fn read_range(
    conn: &mut PgConnection,
    aggregate_type: &str,
    from: &str,
    to: &str,
) -> Result<Vec<EventMessage>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(range_sql(from))
        .bind(from)
        .bind(to)
        .bind(aggregate_type)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(EventMessage::from).collect())
}
