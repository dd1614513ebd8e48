//! What audits read from the event store, and the one repair they make to it: an aggregate's
//! history as stored (pages, flows, chain order for `tally audit verify`), the chain heads a
//! digest covers, and the hashes of rows written before the hash chain. The `audit` crate holds
//! the checks; this module holds their SQL.
//!
//! Audits read stored bytes, untouched by upcasting, as [`StoredEvent`]s; a long audit reads
//! one consistent snapshot ([`begin_snapshot`]) and bounds history by a [`Horizon`] (a digest's
//! `as_of_tx`).

use chrono::{DateTime, Utc};
use domain::hash_chain::{self, ChainHash};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::{Horizon, StoreError, StoredEvent};

/// One aggregate's events after `after_sequence`, oldest first, at most `limit`.
pub async fn events_page(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    after_sequence: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>, StoreError> {
    Ok(sqlx::query_as!(
        StoredEvent,
        r#"SELECT tx_id::text::bigint AS "tx_id!", global_position, aggregate_type,
                aggregate_id, sequence, event_type, event_version,
                payload AS "payload: Json<Value>", metadata AS "metadata: Json<Value>",
                hash, recorded_at
           FROM events
           WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
           ORDER BY sequence LIMIT $4"#,
        aggregate_type,
        aggregate_id,
        after_sequence,
        limit,
    )
    .fetch_all(pool)
    .await?)
}

/// The events of one flow across aggregates (those whose metadata's `correlation_id` is
/// `correlation_id`), in insertion order, at most `limit`: served by `events_by_correlation`.
pub async fn correlated_events(
    pool: &PgPool,
    correlation_id: &str,
    limit: i64,
) -> Result<Vec<StoredEvent>, StoreError> {
    Ok(sqlx::query_as!(
        StoredEvent,
        r#"SELECT tx_id::text::bigint AS "tx_id!", global_position, aggregate_type,
                aggregate_id, sequence, event_type, event_version,
                payload AS "payload: Json<Value>", metadata AS "metadata: Json<Value>",
                hash, recorded_at
           FROM events
           WHERE metadata ->> 'correlation_id' = $1
           ORDER BY global_position LIMIT $2"#,
        correlation_id,
        limit,
    )
    .fetch_all(pool)
    .await?)
}

/// How many events one aggregate (type and id) has, or the whole store when `None`.
pub async fn count_events(
    pool: &PgPool,
    aggregate: Option<(&str, &str)>,
) -> Result<i64, StoreError> {
    let count = match aggregate {
        Some((aggregate_type, aggregate_id)) => {
            sqlx::query_scalar!(
                r#"SELECT count(*) AS "count!" FROM events
                   WHERE aggregate_type = $1 AND aggregate_id = $2"#,
                aggregate_type,
                aggregate_id,
            )
            .fetch_one(pool)
            .await?
        }
        None => {
            sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM events"#)
                .fetch_one(pool)
                .await?
        }
    };
    Ok(count)
}

/// A read-only REPEATABLE READ transaction: every read on it sees one snapshot, however long
/// the audit takes. The caller commits it when done.
pub async fn begin_snapshot(pool: &PgPool) -> Result<Transaction<'static, Postgres>, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// The horizon of `conn`'s snapshot (see [`crate::history::horizon`]) and the transaction's
/// start time, as a digest records them.
pub async fn snapshot_point(
    conn: &mut PgConnection,
) -> Result<(Horizon, DateTime<Utc>), StoreError> {
    let row = sqlx::query!(
        r#"SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS "horizon!",
                  now() AS "now!""#
    )
    .fetch_one(conn)
    .await?;
    Ok((Horizon(row.horizon), row.now))
}

/// Every event of one aggregate (type and id), or of the whole store when `None`, in
/// (aggregate type, aggregate id, sequence) order, the chains' order; only those of
/// transactions below `below` when given. Streamed: the store never is held at once.
pub fn events_in_chain_order<'c>(
    conn: &'c mut PgConnection,
    aggregate: Option<(&str, &str)>,
    below: Option<Horizon>,
) -> BoxStream<'c, Result<StoredEvent, StoreError>> {
    let below = below.map(|h| h.0);
    // Two statements rather than one with an optional filter: each keeps its own plan (one
    // aggregate through the primary key, the whole store as one ordered scan).
    match aggregate {
        Some((aggregate_type, aggregate_id)) => sqlx::query_as!(
            StoredEvent,
            r#"SELECT tx_id::text::bigint AS "tx_id!", global_position, aggregate_type,
                    aggregate_id, sequence, event_type, event_version,
                    payload AS "payload: Json<Value>", metadata AS "metadata: Json<Value>",
                    hash, recorded_at
               FROM events
               WHERE aggregate_type = $1 AND aggregate_id = $2
                 AND ($3::bigint IS NULL OR tx_id < $3::bigint::text::xid8)
               ORDER BY aggregate_type, aggregate_id, sequence"#,
            aggregate_type,
            aggregate_id,
            below,
        )
        .fetch(conn)
        .map_err(StoreError::from)
        .boxed(),
        None => sqlx::query_as!(
            StoredEvent,
            r#"SELECT tx_id::text::bigint AS "tx_id!", global_position, aggregate_type,
                    aggregate_id, sequence, event_type, event_version,
                    payload AS "payload: Json<Value>", metadata AS "metadata: Json<Value>",
                    hash, recorded_at
               FROM events
               WHERE ($1::bigint IS NULL OR tx_id < $1::bigint::text::xid8)
               ORDER BY aggregate_type, aggregate_id, sequence"#,
            below,
        )
        .fetch(conn)
        .map_err(StoreError::from)
        .boxed(),
    }
}

/// An event's place in its aggregate's chain, as a digest counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLink {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    /// `None` on a row written before the hash chain and not yet backfilled.
    pub hash: Option<Vec<u8>>,
    pub global_position: i64,
}

/// Every event of a transaction in `[from, to)`, in no particular order: what committed
/// between two digests.
pub fn links_between(
    conn: &mut PgConnection,
    from: Horizon,
    to: Horizon,
) -> BoxStream<'_, Result<ChainLink, StoreError>> {
    sqlx::query_as!(
        ChainLink,
        "SELECT aggregate_type, aggregate_id, sequence, hash, global_position
         FROM events WHERE tx_id >= $1::bigint::text::xid8 AND tx_id < $2::bigint::text::xid8",
        from.0,
        to.0,
    )
    .fetch(conn)
    .map_err(StoreError::from)
    .boxed()
}

/// Lets the rest of `conn`'s transaction read the whole store: no statement timeout (a full
/// read outlasts the pool's, and a retry would only start it again) and no parallel workers
/// (it finishes, once, without taking every core from the command path).
pub async fn allow_full_scans(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query("SET LOCAL statement_timeout = 0")
        .execute(&mut *conn)
        .await?;
    sqlx::query("SET LOCAL max_parallel_workers_per_gather = 0")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// How many events lie below `below`, and the highest `global_position` among them (0 for
/// none).
pub async fn totals_below(
    conn: &mut PgConnection,
    below: Horizon,
) -> Result<(i64, i64), StoreError> {
    let row = sqlx::query!(
        r#"SELECT count(*) AS "count!", COALESCE(max(global_position), 0) AS "position!"
           FROM events WHERE tx_id < $1::bigint::text::xid8"#,
        below.0,
    )
    .fetch_one(conn)
    .await?;
    Ok((row.count, row.position))
}

/// The last event below `below` of every aggregate, in (aggregate type, aggregate id) order.
pub fn heads_below(
    conn: &mut PgConnection,
    below: Horizon,
) -> BoxStream<'_, Result<ChainLink, StoreError>> {
    sqlx::query_as!(
        ChainLink,
        "SELECT DISTINCT ON (aggregate_type, aggregate_id)
                aggregate_type, aggregate_id, sequence, hash, global_position
         FROM events WHERE tx_id < $1::bigint::text::xid8
         ORDER BY aggregate_type, aggregate_id, sequence DESC",
        below.0,
    )
    .fetch(conn)
    .map_err(StoreError::from)
    .boxed()
}

/// At most `limit` aggregates (type and id) after `after` in key order that have a row without
/// a hash. Served by the partial index `events_unhashed`: instant when nothing is missing.
pub async fn unhashed_aggregates(
    pool: &PgPool,
    after: (&str, &str),
    limit: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    let rows = sqlx::query!(
        "SELECT DISTINCT aggregate_type, aggregate_id FROM events
         WHERE hash IS NULL AND (aggregate_type, aggregate_id) > ($1, $2)
         ORDER BY aggregate_type, aggregate_id LIMIT $3",
        after.0,
        after.1,
        limit,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.aggregate_type, row.aggregate_id))
        .collect())
}

/// Hashes the unhashed rows of one aggregate after its last hashed row, continuing that row's
/// chain (or from genesis), with the aggregate's rows locked meanwhile; returns how many rows
/// it hashed. An unhashed row *followed* by hashed ones is left alone: their writer restarted
/// the chain at genesis after it, and hashing it now would break their links (`tally audit
/// verify` reports it as unchained).
pub async fn hash_unchained_tail(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    let events = sqlx::query_as!(
        StoredEvent,
        r#"SELECT tx_id::text::bigint AS "tx_id!", global_position, aggregate_type,
                aggregate_id, sequence, event_type, event_version,
                payload AS "payload: Json<Value>", metadata AS "metadata: Json<Value>",
                hash, recorded_at
           FROM events WHERE aggregate_type = $1 AND aggregate_id = $2
           ORDER BY sequence FOR UPDATE"#,
        aggregate_type,
        aggregate_id,
    )
    .fetch_all(&mut *tx)
    .await?;
    let tail_start = events
        .iter()
        .rposition(|e| e.hash.is_some())
        .map_or(0, |i| i + 1);
    // The chain continues from the last hashed row, or starts at genesis if none is. The
    // table's CHECK keeps every stored hash 32 bytes long.
    let predecessor = tail_start
        .checked_sub(1)
        .and_then(|i| events.get(i))
        .and_then(|e| e.hash.as_deref());
    let mut prev: ChainHash = match predecessor {
        None => hash_chain::GENESIS,
        Some(hash) => ChainHash::try_from(hash).map_err(|_| {
            StoreError::corrupt(format!("a stored chain hash of {} bytes", hash.len()))
        })?,
    };
    let mut sequences = Vec::new();
    let mut hashes = Vec::new();
    for event in &events[tail_start..] {
        prev = hash_chain::event_hash(&prev, &event.chained());
        sequences.push(event.sequence);
        hashes.push(prev.to_vec());
    }
    sqlx::query!(
        "UPDATE events SET hash = t.hash
         FROM UNNEST($3::bigint[], $4::bytea[]) AS t(sequence, hash)
         WHERE events.aggregate_type = $1 AND events.aggregate_id = $2
           AND events.sequence = t.sequence AND events.hash IS NULL",
        aggregate_type,
        aggregate_id,
        &sequences,
        &hashes,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(sequences.len() as u64)
}
