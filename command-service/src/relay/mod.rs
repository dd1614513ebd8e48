//! The outbox relay: publishes every committed event to the events stream, once, in
//! commit-safe order, and advances its checkpoint only over events JetStream confirmed stored.
//!
//! Order: rows are read by `(tx_id, global_position)` and only from transactions older than the
//! oldest one still running (`tx_id < pg_snapshot_xmin(pg_current_snapshot())`), so a row that
//! commits late can never be skipped (identity positions are taken at insert, not commit).
//!
//! No gap, whatever fails: a batch is pipelined (all sent, then the acks awaited), and each
//! message carries `Nats-Expected-Last-Sequence` = the stream sequence the message before it
//! will have taken (the relay is the stream's only publisher, under the leader lock). When one
//! publication fails (refused, lost, timed out), the server refuses every later one of the batch,
//! so the stream is always a gapless prefix of the outbox, in outbox order, hence in each
//! aggregate's order. The relay moves its position over the acknowledged prefix only and stops
//! at the first failure; before the chain, the later messages were stored, and start-up took
//! the stream's last message for the checkpoint, skipping the failed event for good.
//!
//! Exactly once: each message carries `Nats-Msg-Id = <type>:<id>:<seq>`. At start (and after
//! any failure, which ends the leader term) `reconcile` walks the stream's messages after the
//! checkpoint and compares their ids with the next outbox rows, one for one, moving over each
//! match: what a crash left unconfirmed is neither published again nor skipped, so correctness
//! does not depend on the duplicate window (`--nats-duplicate-window-ms`), a second guard only.
//! A late message of a previous leader (sent before its lock was lost) expects a sequence the
//! new leader has taken, and is refused. A duplicate ack (stored before) breaks the chain for
//! the rest of its batch, which is simply read again.
//! A stream that breaks the prefix rule (a gap left by an older relay, or another publisher) is
//! walked to its end: the rows whose message it already holds are passed over, the missing ones
//! published after them, and no checkpoint is written until they are behind.
//!
//! One relay at a time: instances compete for a PostgreSQL advisory lock; the others stand by.
//! Woken by commits (`commit_signal`), with a poll behind it. The checkpoint is written at most
//! every `CHECKPOINT_EVERY`, not per batch (one write per batch cost a commit, a WAL flush,
//! per batch): after a crash, the walk covers the events published since.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use event_store::commit_signal::{CommitSignal, NOTIFY_CHANNEL};
use event_store::outbox::{self, CommitPosition, RelayCheckpoint};
use platform::nats::{StreamNames, Subjects};
use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

mod message;
mod publishing;
mod reconcile;

/// Longest the stored checkpoint trails what was published (the start-up walk re-reads the
/// stream's messages after it, one request each, so it stays short).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// How often the leader checks that its lock connection is still there.
const LOCK_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a stopping relay waits for committed events held back by open transactions.
const FLUSH_WAIT_MAX: Duration = Duration::from_secs(10);
/// Longest pause between attempts after a failure (PostgreSQL or JetStream down). Short: a
/// JetStream leader election takes 4-9 s, and with pauses growing to 5 s the relay resumed
/// 10-13 s after a stream leader was killed (tests/it/multi_instance.rs), the pause on top of the
/// election; an attempt costs one session and one stream request, cheap at once a second.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A leader's term at least this long resets the failure backoff.
const HEALTHY_TERM: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub batch_max: i64,
    pub poll: Duration,
    /// Tests only: the Nth publication (1-based, from the relay's start) is rejected by
    /// JetStream, once (`Config::relay_fail_publish`).
    pub fail_publish: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("event store")]
    Store(#[from] event_store::StoreError),
    #[error("the leader lock's connection or the notification listener")]
    Connection(#[from] sqlx::Error),
    #[error("publish to JetStream")]
    Publish(#[from] async_nats::jetstream::context::PublishError),
    #[error("writing an event's message body")]
    Body(#[source] serde_json::Error),
    #[error("stream lookup")]
    Stream(String),
}

/// Where the relay is: the last event JetStream confirmed, and the stream sequence our
/// publications reached (the base of the expected-sequence chain).
type Position = RelayCheckpoint;

const START: Position = RelayCheckpoint {
    position: CommitPosition::START,
    stream_sequence: 0,
};

pub struct Relay {
    signal: Arc<CommitSignal>,
    pool: PgPool,
    jetstream: jetstream::Context,
    subjects: Subjects,
    stream: String,
    config: RelayConfig,
    publish_errors: Option<prometheus::IntCounter>,
    delays: Option<prometheus::Histogram>,
    /// Publications so far; counted only while `config.fail_publish` is set.
    publications: std::sync::atomic::AtomicU64,
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
        jetstream: jetstream::Context,
        subjects: Subjects,
        streams: &StreamNames,
        config: RelayConfig,
    ) -> Self {
        Relay {
            signal,
            pool,
            jetstream,
            subjects,
            stream: streams.events.clone(),
            config,
            publish_errors: None,
            delays: None,
            publications: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The index in a batch of `len` publications of the one to fail (`fail_publish`). One
    /// branch per batch when no fault is set.
    fn injected_fault(&self, len: usize) -> Option<usize> {
        let nth = self.config.fail_publish?;
        let before = self
            .publications
            .fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
        (before < nth && nth <= before + len as u64).then(|| (nth - before - 1) as usize)
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
    ///
    /// A leader's term that ends in an error is followed by a pause that doubles with each
    /// term in a row that failed (up to `BACKOFF_MAX`).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            let term_started = std::time::Instant::now();
            match self.lead(&shutdown).await {
                Ok(()) => failures = 0,
                Err(error) => {
                    if let (RelayError::Publish(_), Some(counter)) = (&error, &self.publish_errors)
                    {
                        counter.inc();
                    }
                    // A term that lasted is a fresh start: only failures in a row back off
                    // further, so an occasional hiccup never costs the longest pause.
                    if term_started.elapsed() >= HEALTHY_TERM {
                        failures = 0;
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
        // Opened by the pool, so on the current primary (the pool follows a failover, and refuses
        // a standby), then taken out of it: the leader lock lives exactly as long as this session.
        let mut lock_conn = self.pool.acquire().await?.detach();
        // Named apart from the pool's sessions, so `pg_stat_activity` shows which is the relay.
        sqlx::query("SET application_name = 'command-service-relay'")
            .execute(&mut lock_conn)
            .await?;
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
        let reconciled = self.reconcile().await?;
        let mut position = reconciled.position;
        // Rows the stream already holds out of outbox order (see `reconcile`): passed over, and
        // no checkpoint is written until they are behind us.
        let mut already_stored = reconciled.already_stored;
        let mut saved = position;
        let mut saved_at = tokio::time::Instant::now();
        let mut lock_checked_at = tokio::time::Instant::now();
        let mut flush_deadline = None;
        loop {
            let (published, more) = self
                .publish_batch(lock_conn, &mut position, &mut already_stored)
                .await?;
            if position != saved
                && already_stored.is_empty()
                && (saved_at.elapsed() >= CHECKPOINT_EVERY || shutdown.is_cancelled())
            {
                saved = self.save_checkpoint(position).await?;
                saved_at = tokio::time::Instant::now();
            }
            if shutdown.is_cancelled() {
                let deadline = *flush_deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_WAIT_MAX);
                if self.flushed(published, position, deadline).await? {
                    break;
                }
                continue;
            }
            if more || published as i64 >= self.config.batch_max {
                continue;
            }
            // Until a commit (here or, by NOTIFY, elsewhere), the poll, or the checkpoint due.
            let checkpoint_due = saved_at + CHECKPOINT_EVERY;
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = self.signal.next_local_commit() => {}
                () = tokio::time::sleep_until(checkpoint_due), if position != saved && already_stored.is_empty() => {}
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
        if position != saved && already_stored.is_empty() {
            self.save_checkpoint(position).await?;
        }
        Ok(())
    }

    /// Whether a stopping relay is done: it flushes what is already committed first. Rows can
    /// be held back by unrelated transactions still open (the xmin guard), so it waits for
    /// them, until `deadline`.
    async fn flushed(
        &self,
        published: usize,
        position: Position,
        deadline: tokio::time::Instant,
    ) -> Result<bool, RelayError> {
        if published > 0 {
            return Ok(false);
        }
        if !outbox::committed_beyond(&self.pool, position.position).await? {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "stopping with committed events not yet published; the next relay publishes them"
            );
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(false)
    }

    async fn save_checkpoint(&self, position: Position) -> Result<Position, RelayError> {
        outbox::save_checkpoint(&self.pool, &self.stream, position).await?;
        Ok(position)
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
