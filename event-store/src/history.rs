//! Reading history in commit-safe slices: the horizon (`pg_snapshot_xmin`: every transaction
//! below it has ended, so the events below it are final, and a later horizon only adds events
//! after them), and the events of one aggregate type between two horizons, in
//! `global_position` order. Rebuilds copy history this way while the live projection runs.

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

use crate::{StoreError, StoredEvent};

/// A commit-safe horizon: a transaction id (`xid8`, read as a number) below which every
/// transaction has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Horizon(pub i64);

impl Horizon {
    /// Below every transaction: the start of history.
    pub const START: Horizon = Horizon(0);
}

impl std::fmt::Display for Horizon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The horizon as of now, on `conn` (inside a transaction: as of its snapshot).
pub async fn horizon(conn: &mut PgConnection) -> Result<Horizon, StoreError> {
    let horizon = sqlx::query_scalar!(
        r#"SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS "horizon!""#
    )
    .fetch_one(conn)
    .await?;
    Ok(Horizon(horizon))
}

/// Events of `aggregate_type` below `below`.
pub async fn count_below(
    conn: &mut PgConnection,
    aggregate_type: &str,
    below: Horizon,
) -> Result<u64, StoreError> {
    let count = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM events
           WHERE aggregate_type = $1 AND tx_id < $2::bigint::text::xid8"#,
        aggregate_type,
        below.0,
    )
    .fetch_one(conn)
    .await?;
    u64::try_from(count).map_err(|_| StoreError::corrupt(format!("a count of {count}")))
}

/// The events of `aggregate_type` in `[from, to)`, in `global_position` order, streamed.
pub fn range<'a>(
    pool: &'a PgPool,
    aggregate_type: &'a str,
    from: Horizon,
    to: Horizon,
) -> BoxStream<'a, Result<StoredEvent, StoreError>> {
    if from == Horizon::START {
        // A full copy: one scan in `global_position` order.
        sqlx::query_as!(
            StoredEvent,
            r#"SELECT tx_id::text::bigint AS "tx_id!", global_position, aggregate_type,
                    aggregate_id, sequence, event_type, event_version,
                    payload AS "payload: Json<Value>", metadata AS "metadata: Json<Value>",
                    hash, recorded_at
               FROM events
               WHERE aggregate_type = $1 AND tx_id < $2::bigint::text::xid8
               ORDER BY global_position"#,
            aggregate_type,
            to.0,
        )
        .fetch(pool)
        .map_err(StoreError::from)
        .boxed()
    } else {
        between(pool, aggregate_type, from, to)
    }
}

/// The events of `aggregate_type` in `[from, to)`, in `global_position` order, on `conn`.
pub async fn read_range(
    conn: &mut PgConnection,
    aggregate_type: &str,
    from: Horizon,
    to: Horizon,
) -> Result<Vec<StoredEvent>, StoreError> {
    between(conn, aggregate_type, from, to).try_collect().await
}

/// The (usually few) events between two horizons: found through the `tx_id` index first,
/// then sorted. Planned as the full copy's query, PostgreSQL walks the whole table in
/// `global_position` order to find a handful of rows, and the swap (which runs this under the
/// write lock) took over a second on a million events. Streamed: the first catch-up pass after
/// a long copy can be large.
fn between<'e, E: sqlx::PgExecutor<'e> + 'e>(
    executor: E,
    aggregate_type: &'e str,
    from: Horizon,
    to: Horizon,
) -> BoxStream<'e, Result<StoredEvent, StoreError>> {
    sqlx::query_as!(
        StoredEvent,
        r#"WITH tail AS MATERIALIZED (
               SELECT tx_id::text::bigint AS tx_id, global_position, aggregate_type,
                      aggregate_id, sequence, event_type, event_version, payload, metadata,
                      hash, recorded_at
               FROM events
               WHERE tx_id >= $2::bigint::text::xid8 AND tx_id < $3::bigint::text::xid8
                 AND aggregate_type = $1)
           SELECT tx_id AS "tx_id!", global_position AS "global_position!",
                  aggregate_type AS "aggregate_type!", aggregate_id AS "aggregate_id!",
                  sequence AS "sequence!", event_type AS "event_type!",
                  event_version AS "event_version!",
                  payload AS "payload!: Json<Value>", metadata AS "metadata!: Json<Value>",
                  hash, recorded_at AS "recorded_at!"
           FROM tail ORDER BY global_position"#,
        aggregate_type,
        from.0,
        to.0,
    )
    .fetch(executor)
    .map_err(StoreError::from)
    .boxed()
}

/// Events of `aggregate_type` the caller is missing: for each `ids[i]`, its sequences
/// `from[i]..=to[i]`, in (aggregate id, sequence) order. A projection that receives an
/// aggregate's event N while it has applied only up to v < N - 1 reads v + 1 .. N - 1 here:
/// the relay publishes an event only after it and its predecessors committed, so they exist.
pub async fn aggregate_gaps(
    conn: &mut PgConnection,
    aggregate_type: &str,
    ids: &[String],
    from: &[i64],
    to: &[i64],
) -> Result<Vec<StoredEvent>, StoreError> {
    let rows = sqlx::query_as!(
        StoredEvent,
        r#"SELECT e.tx_id::text::bigint AS "tx_id!", e.global_position, e.aggregate_type,
                  e.aggregate_id, e.sequence, e.event_type, e.event_version,
                  e.payload AS "payload: Json<Value>", e.metadata AS "metadata: Json<Value>",
                  e.hash, e.recorded_at
           FROM UNNEST($2::text[], $3::bigint[], $4::bigint[]) AS g(id, lo, hi)
           JOIN events e ON e.aggregate_type = $1 AND e.aggregate_id = g.id
                        AND e.sequence BETWEEN g.lo AND g.hi
           ORDER BY e.aggregate_id, e.sequence"#,
        aggregate_type,
        ids,
        from,
        to,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

impl StoredEvent<Value> {
    /// The event as the projections apply it (the body the relay publishes).
    pub fn into_message(self) -> Result<domain::envelope::EventMessage, StoreError> {
        Ok(domain::envelope::EventMessage {
            sequence: self.sequence_u64()?,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            event_type: self.event_type,
            event_version: self.event_version,
            global_position: self.global_position,
            recorded_at: self.recorded_at,
            payload: self.payload.0,
            metadata: self.metadata.0,
        })
    }
}
