//! The outbox relay: publishes every committed event to the events stream, once, in
//! commit-safe order, and advances its checkpoint only after JetStream acknowledged.
//!
//! Order: rows are read by `(tx_id, global_position)` and only from transactions older than the
//! oldest one still running (`tx_id < pg_snapshot_xmin(pg_current_snapshot())`), so a row that
//! commits late can never be skipped (identity positions are taken at insert, not commit).
//! Exactly once: each message carries `Nats-Msg-Id = <type>:<id>:<seq>`, so re-publication after
//! a crash is dropped by the stream inside its duplicate window; beyond it, start-up
//! reconciliation moves the checkpoint to the event the stream actually holds last.
//! One relay at a time: instances compete for a PostgreSQL advisory lock; the others stand by.
//! Woken by commits (`commit_signal`), with a poll behind it. The checkpoint is written at most
//! every `CHECKPOINT_EVERY`, not per batch: after a crash the events since it are published
//! again and dropped by the stream as duplicates, so a lagging checkpoint costs nothing but a
//! little re-publication, while one write per batch cost a commit (a WAL flush) per batch.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture};
use platform::nats::{StreamNames, Subjects};
use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::commit_signal::{CommitSignal, NOTIFY_CHANNEL};

mod outbox_row;
mod reconcile;

use outbox_row::OutboxRow;

/// Longest the stored checkpoint trails what was published (well inside the stream's
/// duplicate window, so what a crash re-publishes is dropped there).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// How often the leader checks that its lock connection is still there.
const LOCK_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a stopping relay waits for committed events held back by open transactions.
const FLUSH_WAIT_MAX: Duration = Duration::from_secs(10);
/// Longest pause between attempts after a failure (PostgreSQL or JetStream down).
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub batch_max: i64,
    pub poll: Duration,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("database")]
    Db(#[from] sqlx::Error),
    #[error("publish to JetStream")]
    Publish(#[from] async_nats::jetstream::context::PublishError),
    #[error("stream lookup")]
    Stream(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    /// `xid8` as text (sqlx has no xid8 type).
    tx_id: u64,
    global_position: i64,
    /// The highest stream sequence our publications reached.
    stream_sequence: u64,
}

const START: Position = Position {
    tx_id: 0,
    global_position: 0,
    stream_sequence: 0,
};

pub struct Relay {
    signal: Arc<CommitSignal>,
    pool: PgPool,
    connect: sqlx::postgres::PgConnectOptions,
    jetstream: jetstream::Context,
    subjects: Subjects,
    stream: String,
    config: RelayConfig,
    publish_errors: Option<prometheus::IntCounter>,
    delays: Option<prometheus::Histogram>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl Relay {
    pub fn new(
        signal: Arc<CommitSignal>,
        pool: PgPool,
        connect: sqlx::postgres::PgConnectOptions,
        jetstream: jetstream::Context,
        subjects: Subjects,
        streams: &StreamNames,
        config: RelayConfig,
    ) -> Self {
        Relay {
            signal,
            pool,
            connect,
            jetstream,
            subjects,
            stream: streams.events.clone(),
            config,
            publish_errors: None,
            delays: None,
        }
    }

    /// Counts failed publications on `counter`.
    pub fn with_publish_error_counter(mut self, counter: prometheus::IntCounter) -> Self {
        self.publish_errors = Some(counter);
        self
    }

    /// Observes each event's time from commit to JetStream's acknowledgement on `histogram`.
    pub fn with_delay_histogram(mut self, histogram: prometheus::Histogram) -> Self {
        self.delays = Some(histogram);
        self
    }

    /// Runs until `shutdown`; then publishes what is already committed and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            match self.lead(&shutdown).await {
                Ok(()) => failures = 0,
                Err(error) => {
                    if let (RelayError::Publish(_), Some(counter)) = (&error, &self.publish_errors)
                    {
                        counter.inc();
                    }
                    failures = failures.saturating_add(1);
                    let pause = (Duration::from_millis(100) * 2u32.saturating_pow(failures.min(6)))
                        .min(BACKOFF_MAX);
                    tracing::warn!(error = %error_chain(&error), retry_in_ms = pause.as_millis() as u64, "relay paused");
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        tracing::info!("relay stopped");
    }

    /// Waits for the leader lock, reconciles with the stream, then relays until shutdown.
    async fn lead(&self, shutdown: &CancellationToken) -> Result<(), RelayError> {
        let mut lock_conn = PgConnection::connect_with(&self.connect).await?;
        let lock_key = format!("tally-relay:{}", self.stream);
        loop {
            let got: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                    .bind(&lock_key)
                    .fetch_one(&mut lock_conn)
                    .await?;
            if got {
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        tracing::info!(stream = %self.stream, "relay is the leader");
        self.signal.set_leading_here(true);
        let led = self.relay_while_leader(&mut lock_conn, shutdown).await;
        self.signal.set_leading_here(false);
        drop(lock_conn);
        led
    }

    async fn relay_while_leader(
        &self,
        lock_conn: &mut PgConnection,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        // The outbox read runs on this connection, planned once: a custom plan per call cost
        // as much PostgreSQL time as running it (pg_stat_statements: 0.37 ms of planning per
        // call, each one probing the end of `events_tx_order` to estimate the range). The
        // generic plan is the same ordered index scan with its LIMIT.
        sqlx::query("SET plan_cache_mode = force_generic_plan")
            .execute(&mut *lock_conn)
            .await?;
        let mut position = self.reconcile().await?;
        let mut saved = position;
        let mut saved_at = tokio::time::Instant::now();
        let mut lock_checked_at = tokio::time::Instant::now();
        let mut flush_deadline = None;
        loop {
            let published = self.publish_batch(lock_conn, &mut position).await?;
            if position != saved
                && (saved_at.elapsed() >= CHECKPOINT_EVERY || shutdown.is_cancelled())
            {
                saved = self.save_checkpoint(position).await?;
                saved_at = tokio::time::Instant::now();
            }
            if shutdown.is_cancelled() {
                // Flush what is already committed before stopping. Rows can be held back by
                // unrelated transactions still open (the xmin guard), so wait for them, bounded.
                let deadline = *flush_deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_WAIT_MAX);
                if published > 0 {
                    continue;
                }
                if !self.committed_beyond(&position).await? {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(
                        "stopping with committed events not yet published; the next relay publishes them"
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            if published as i64 >= self.config.batch_max {
                continue;
            }
            // Until a commit (here or, by NOTIFY, elsewhere), the poll, or the checkpoint due.
            let checkpoint_due = saved_at + CHECKPOINT_EVERY;
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = self.signal.next_local_commit() => {}
                () = tokio::time::sleep_until(checkpoint_due), if position != saved => {}
                notification = tokio::time::timeout(self.config.poll, listener.recv()) => {
                    if let Ok(Err(error)) = notification {
                        return Err(error.into());
                    }
                }
            }
            // The leader lock lives as long as this connection: check it is still there.
            if lock_checked_at.elapsed() >= LOCK_CHECK_EVERY {
                lock_conn.ping().await?;
                lock_checked_at = tokio::time::Instant::now();
            }
        }
        if position != saved {
            self.save_checkpoint(position).await?;
        }
        Ok(())
    }

    /// Whether any committed event lies beyond `position` (visible or still held back).
    async fn committed_beyond(&self, position: &Position) -> Result<bool, RelayError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM events WHERE (tx_id, global_position) > ($1::text::xid8, $2))",
        )
        .bind(position.tx_id.to_string())
        .bind(position.global_position)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn save_checkpoint(&self, position: Position) -> Result<Position, RelayError> {
        sqlx::query(
            "UPDATE relay_checkpoints SET tx_id = $2::text::xid8, global_position = $3,
                    stream_sequence = $4, updated_at = now()
             WHERE stream = $1",
        )
        .bind(&self.stream)
        .bind(position.tx_id.to_string())
        .bind(position.global_position)
        .bind(i64::try_from(position.stream_sequence).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(position)
    }

    /// Publishes the next batch of committed events; returns how many.
    async fn publish_batch(
        &self,
        conn: &mut PgConnection,
        position: &mut Position,
    ) -> Result<usize, RelayError> {
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT tx_id::text AS tx_id, global_position, aggregate_type, aggregate_id, sequence,
                    event_type, event_version, payload, metadata, recorded_at
             FROM events
             WHERE (tx_id, global_position) > ($1::text::xid8, $2)
               AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
             -- Qualified: the bare name would sort by the text alias above ('1000' < '996').
             ORDER BY events.tx_id, events.global_position
             LIMIT $3",
        )
        .bind(position.tx_id.to_string())
        .bind(position.global_position)
        .bind(self.config.batch_max)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(0);
        };
        let mut next = Position {
            tx_id: last.tx_id.parse().unwrap_or(position.tx_id),
            global_position: last.global_position,
            stream_sequence: position.stream_sequence,
        };
        // Pipelined: send every message, then await the acks (one round trip per batch).
        let mut acks: Vec<PublishAckFuture> = Vec::with_capacity(rows.len());
        for row in &rows {
            let metadata = row.relayed_metadata();
            // One span per event, carrying the command's trace id: the relay's hop in the trace.
            let span = tracing::debug_span!(
                "relay_publish",
                aggregate_type = %row.aggregate_type,
                aggregate_id = %row.aggregate_id,
                sequence = row.sequence,
                trace_id = metadata.trace_id.as_deref().unwrap_or(""),
            );
            platform::telemetry::continue_trace(&span, metadata.traceparent.as_deref());
            let (subject, publish) = outbox_row::message(&self.subjects, row, &metadata);
            let sent = tracing::Instrument::instrument(
                self.jetstream.send_publish(subject, publish),
                span,
            )
            .await?;
            acks.push(sent);
        }
        let mut reset = false;
        for ack in acks {
            let ack = ack.await?;
            // A new message stored at or below a sequence we already reached means the stream
            // was recreated or lost data while we ran.
            reset |= !ack.duplicate && ack.sequence <= position.stream_sequence;
            next.stream_sequence = next.stream_sequence.max(ack.sequence);
        }
        if reset {
            tracing::warn!(stream = %self.stream, "the stream went backwards; re-publishing all history from PostgreSQL");
            *position = self.save_checkpoint(START).await?;
            return Ok(rows.len());
        }
        *position = next;
        if let Some(delays) = &self.delays {
            let acked_at = chrono::Utc::now();
            for row in &rows {
                let delay = (acked_at - row.recorded_at).num_microseconds().unwrap_or(0);
                delays.observe(delay.max(0) as f64 / 1e6);
            }
        }
        tracing::debug!(
            published = rows.len(),
            stream_sequence = next.stream_sequence,
            "relayed"
        );
        Ok(rows.len())
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
