//! Rebuilds a projection from history while the live one keeps serving, then swaps atomically.
//!
//! Source: the event store, not `TALLY_EVENTS` from sequence 1. The store is the record (the
//! stream is derived from it and may be trimmed or re-derived), one indexed scan streams far
//! faster than a consumer pulls, and the store's commit-safe horizon (`tx_id` below the
//! snapshot's xmin) gives passes that never miss a late-committing event.
//!
//! 1. Shadow tables are created in schema `tally_rebuild_<projection>` (`shadow_tables`: like
//!    the live ones, but without their read-only indexes), and the rebuild's connection puts
//!    that schema first on its search path, so the projection's own `apply` writes them
//!    unchanged.
//! 2. Copy: every event of a transaction below the current xmin, in `global_position` order
//!    (per aggregate that is sequence order), folded in batches; a reader task streams the
//!    next batch while the last one is written. Then the read-only indexes are built.
//! 3. Catch-up passes take the events between the previous horizon and a new one, until a pass
//!    is small.
//! 4. Swap, in one transaction: take the projection's write lock exclusively (live batches
//!    finish and the next ones wait), apply the last events up to a fresh horizon (which covers
//!    everything the live worker applied, since the relay only publishes below an older one),
//!    move the live tables out and the shadow ones in, replace the per-aggregate versions.
//!    Readers wait for the swap's locks at most; the live worker then goes on, skipping events
//!    the shadow already holds by the usual version check.

use std::time::Instant;

use domain::envelope::EventMessage;
use futures::TryStreamExt;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::mpsc;

use crate::Projection;
use crate::apply_error::ApplyError;
use crate::versions;
use crate::write_lock;
use event_store::history::{self, Horizon};

mod shadow_tables;

/// Events folded per shadow transaction.
const BATCH_EVENTS: usize = 10_000;
/// A catch-up pass this small ends catching up: the rest is applied inside the swap.
const CATCH_UP_SMALL: u64 = 5_000;
const CATCH_UP_PASSES_MAX: u32 = 20;
/// How long the swap waits for its locks before giving up (and leaving the live tables as
/// they were).
const SWAP_LOCK_TIMEOUT: &str = "10s";

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("unknown projection `{0}` (known: accounts, transfers, transactions, holds)")]
    UnknownProjection(String),
    #[error("a rebuild of `{0}` is already running")]
    AlreadyRunning(String),
    #[error(
        "projection `{0}` has {1} dead-lettered aggregate(s); resolve them first (`tally dlq list`)"
    )]
    DeadLetters(String, i64),
    #[error("event {aggregate_id}#{sequence} cannot be applied: {reason}")]
    Poison {
        aggregate_id: String,
        sequence: u64,
        reason: String,
    },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Store(#[from] event_store::StoreError),
}

impl From<ApplyError> for RebuildError {
    fn from(error: ApplyError) -> Self {
        match error {
            ApplyError::Db(e) => RebuildError::Db(e),
            ApplyError::Poison {
                aggregate_id,
                sequence,
                reason,
            } => RebuildError::Poison {
                aggregate_id,
                sequence,
                reason,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Copy,
    CatchUp,
    Swap,
}

#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub phase: Phase,
    pub events_done: u64,
    /// Events below the first horizon: the copy phase's total.
    pub events_total: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct RebuildReport {
    pub events: u64,
    pub catch_up_passes: u32,
    pub elapsed_s: f64,
    /// How long the swap transaction held the projection's write lock.
    pub swap_ms: u128,
}

/// Rebuilds `projection` into shadow tables and swaps them in. `connect` opens the rebuild's
/// own connection (its search path is changed); `pool` serves the streaming reads.
pub async fn rebuild(
    pool: &PgPool,
    mut conn: PgConnection,
    projection: &str,
    mut on_progress: impl FnMut(Progress),
) -> Result<RebuildReport, RebuildError> {
    let Some(kind) = Projection::by_name(projection) else {
        return Err(RebuildError::UnknownProjection(projection.to_owned()));
    };
    let started = Instant::now();
    let running: bool = sqlx::query_scalar(
        "SELECT NOT pg_try_advisory_lock(hashtextextended('tally.projection.rebuild:' || $1, 0))",
    )
    .bind(projection)
    .fetch_one(&mut conn)
    .await?;
    if running {
        return Err(RebuildError::AlreadyRunning(projection.to_owned()));
    }
    let parked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM projection_parked WHERE projection = $1")
            .bind(projection)
            .fetch_one(&mut conn)
            .await?;
    if parked > 0 {
        return Err(RebuildError::DeadLetters(projection.to_owned(), parked));
    }

    let live: String = sqlx::query_scalar("SELECT quote_ident(current_schema())")
        .fetch_one(&mut conn)
        .await?;
    let shadow = format!("tally_rebuild_{projection}");
    let retired = format!("tally_retired_{projection}");
    let deferred_indexes = shadow_tables::create(&mut conn, kind, &live, &shadow).await?;

    let mut horizon = history::horizon(&mut conn).await?;
    let events_total = history::count_below(&mut conn, kind.aggregate_type(), horizon).await?;
    let mut progress = Progress {
        phase: Phase::Copy,
        events_done: 0,
        events_total,
    };
    on_progress(progress);
    copy_range(
        pool,
        &mut conn,
        kind,
        Horizon::START,
        horizon,
        &mut progress,
        &mut on_progress,
    )
    .await?;

    shadow_tables::build_deferred_indexes(&mut conn, &deferred_indexes).await?;

    progress.phase = Phase::CatchUp;
    let mut passes = 0;
    loop {
        passes += 1;
        let next = history::horizon(&mut conn).await?;
        let before = progress.events_done;
        copy_range(
            pool,
            &mut conn,
            kind,
            horizon,
            next,
            &mut progress,
            &mut on_progress,
        )
        .await?;
        horizon = next;
        if progress.events_done - before < CATCH_UP_SMALL || passes >= CATCH_UP_PASSES_MAX {
            break;
        }
    }

    // Fresh tables have no statistics: without these, the first queries after the swap (reads,
    // the live worker's lookups) are planned as if the tables were empty.
    let mut analyze = String::new();
    for table in kind.tables() {
        analyze.push_str(&format!("ANALYZE {shadow}.{table};"));
    }
    analyze.push_str(&format!("ANALYZE {shadow}.projection_versions;"));
    sqlx::raw_sql(&analyze).execute(&mut conn).await?;

    progress.phase = Phase::Swap;
    on_progress(progress);
    let swap_started = Instant::now();
    let mut tx = conn.begin().await?;
    sqlx::query(&format!("SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'"))
        .execute(&mut *tx)
        .await?;
    write_lock::exclusive(&mut tx, projection).await?;
    let last = history::horizon(&mut tx).await?;
    let tail = history::read_range(&mut tx, kind.aggregate_type(), horizon, last)
        .await?
        .into_iter()
        .map(event_store::StoredEvent::into_message)
        .collect::<Result<Vec<_>, _>>()?;
    progress.events_done += tail.len() as u64;
    apply_shadow(&mut tx, kind, &tail).await?;
    let mut swap = String::new();
    for table in kind.tables() {
        swap.push_str(&format!(
            "ALTER TABLE {live}.{table} SET SCHEMA {retired}; ALTER TABLE {shadow}.{table} SET SCHEMA {live};"
        ));
    }
    sqlx::raw_sql(&swap).execute(&mut *tx).await?;
    replace_versions(&mut tx, &live, &shadow, projection).await?;
    tx.commit().await?;
    let swap_ms = swap_started.elapsed().as_millis();
    sqlx::raw_sql(&format!(
        "DROP SCHEMA {retired} CASCADE; DROP SCHEMA {shadow} CASCADE"
    ))
    .execute(&mut conn)
    .await?;
    on_progress(progress);
    let _ = conn.close().await;
    Ok(RebuildReport {
        events: progress.events_done,
        catch_up_passes: passes,
        elapsed_s: started.elapsed().as_secs_f64(),
        swap_ms,
    })
}

/// Streams `[from, to)` from the pool into the shadow tables on `conn`, one batch in flight.
async fn copy_range(
    pool: &PgPool,
    conn: &mut PgConnection,
    kind: Projection,
    from: Horizon,
    to: Horizon,
    progress: &mut Progress,
    on_progress: &mut impl FnMut(Progress),
) -> Result<(), RebuildError> {
    let (sender, mut batches) = mpsc::channel::<Vec<EventMessage>>(2);
    let pool = pool.clone();
    let reader = tokio::spawn(async move {
        let mut rows = history::range(&pool, kind.aggregate_type(), from, to);
        let mut batch = Vec::with_capacity(BATCH_EVENTS);
        while let Some(row) = rows.try_next().await? {
            batch.push(row.into_message()?);
            if batch.len() == BATCH_EVENTS {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_EVENTS));
                if sender.send(full).await.is_err() {
                    return Ok(());
                }
            }
        }
        if !batch.is_empty() {
            let _ = sender.send(batch).await;
        }
        Ok::<(), event_store::StoreError>(())
    });
    while let Some(batch) = batches.recv().await {
        let mut tx = conn.begin().await?;
        apply_shadow(&mut tx, kind, &batch).await?;
        tx.commit().await?;
        progress.events_done += batch.len() as u64;
        on_progress(*progress);
    }
    match reader.await {
        Ok(result) => result?,
        Err(join) => return Err(RebuildError::Db(sqlx::Error::Protocol(join.to_string()))),
    }
    Ok(())
}

/// Folds `events` into the shadow tables (first on this connection's search path) and records
/// each aggregate's last sequence in the shadow `projection_versions`.
async fn apply_shadow(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    kind: Projection,
    events: &[EventMessage],
) -> Result<(), RebuildError> {
    if events.is_empty() {
        return Ok(());
    }
    // One writer, so one key for its system-account rows; the live partitions add theirs.
    kind.apply(tx, events, 0, crate::accounts::FeedOrder::Rebuild)
        .await?;
    let mut last: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
    for event in events {
        last.insert(
            &event.aggregate_id,
            i64::try_from(event.sequence).unwrap_or(i64::MAX),
        );
    }
    let (ids, versions): (Vec<&str>, Vec<i64>) = last.into_iter().unzip();
    // Into the shadow `projection_versions`: first on this connection's search path.
    versions::record(tx, kind, &ids, &versions).await?;
    Ok(())
}

/// Makes the live `projection_versions` rows of `projection` equal the shadow's, writing only
/// the rows that differ: this runs under the write lock, and rewriting every row of a large
/// ledger held readers and the live worker for over a second.
async fn replace_versions(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    live: &str,
    shadow: &str,
    projection: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "DELETE FROM {live}.projection_versions l
         WHERE l.projection = $1 AND NOT EXISTS (
             SELECT 1 FROM {shadow}.projection_versions s
             WHERE s.projection = l.projection AND s.aggregate_type = l.aggregate_type
               AND s.aggregate_id = l.aggregate_id)"
    ))
    .bind(projection)
    .execute(&mut **tx)
    .await?;
    sqlx::query(&format!(
        // The difference is found by a join first: an upsert of every row would lock (and so
        // write) every existing row, even those its WHERE leaves unchanged.
        "INSERT INTO {live}.projection_versions AS l (projection, aggregate_type, aggregate_id, version)
         SELECT s.projection, s.aggregate_type, s.aggregate_id, s.version
         FROM {shadow}.projection_versions s
         LEFT JOIN {live}.projection_versions o
           ON o.projection = s.projection AND o.aggregate_type = s.aggregate_type
          AND o.aggregate_id = s.aggregate_id
         WHERE o.version IS DISTINCT FROM s.version
         ON CONFLICT (projection, aggregate_type, aggregate_id) DO UPDATE SET version = EXCLUDED.version"
    ))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
