//! The projection worker loop for one partition of a projection: a durable pull consumer on the
//! partition's subjects of the events stream, one transaction per batch (read-model rows +
//! per-aggregate versions + the partition's checkpoint), acks after the commit.
//!
//! Exactly-once effects come from the transaction, not from JetStream: an event whose sequence
//! is at or below the aggregate's applied version is a duplicate (acked, not applied). One above
//! `version + 1` is a gap: JetStream redelivers out of order (nats-server #6114), and a worker
//! that died holding deliveries gives them back only after the ack wait. The gap is filled from
//! the event store in the same transaction (event N of an aggregate was published only after
//! 1..N-1 committed), never skipped and never waited for: the late deliveries then arrive as
//! duplicates. Catch-up and live are this one loop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use domain::envelope::EventMessage;
use futures::{FutureExt, StreamExt};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::Projection;
use crate::apply_error::ApplyError;
use crate::versions;
use crate::write_lock;

/// A delivery not acknowledged within this comes back (batches commit far sooner).
const ACK_WAIT: Duration = Duration::from_secs(30);
/// A gap's later event is offered again after this (only when the event store could not fill
/// the gap, which a committed event's predecessors always can).
const GAP_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Gaps filled from the event store are logged at most this often (a takeover fills many).
const GAP_LOG_EVERY: Duration = Duration::from_secs(10);
/// A batch that lost the versions' compare-and-set to another writer is offered again after
/// this.
const RACED_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Longest pause after a database failure.
pub(crate) const FAILURE_DELAY_MAX: Duration = Duration::from_secs(5);
/// The priority group the workers of a partition pull with; one is pinned at a time. Only the
/// partition's owner (`partitions`) pulls; the pin guards a hand-over's overlap.
const PRIORITY_GROUP: &str = "workers";
/// How long a pinned worker may stop pulling before the pin moves (the new owner unpins a
/// dead one at once).
const PIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often operator actions on parked aggregates (`tally dlq retry|drop`) are looked for.
const ACTIONS_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub batch_max: usize,
    /// Deliveries of a failing event before it is dead-lettered and its aggregate parked.
    pub poison_attempts: i64,
}

#[derive(Debug)]
pub struct Runner {
    pub pool: PgPool,
    pub jetstream: jetstream::Context,
    pub stream: String,
    pub projection: Projection,
    /// Which partition of the projection this runner applies.
    pub partition: u32,
    /// How many the events stream has.
    pub partitions: u32,
    /// `<prefix>.evt.<aggregate type>.*.<partition>`
    pub filter_subject: String,
    /// `<prefix>.dlq.<projection>`
    pub dead_letter_subject: String,
    pub config: RunnerConfig,
    /// Events per applied batch.
    pub batch_sizes: prometheus::Histogram,
    /// From each applied event's recording to the read model's commit.
    pub event_delays: prometheus::Histogram,
    /// Gaps filled since the last log line, and when that was.
    pub gap_log: Mutex<GapLog>,
}

/// What gap filling did since it was last logged (rate-limited WARN).
#[derive(Debug)]
pub struct GapLog {
    pub logged_at: Option<Instant>,
    pub aggregates: u64,
    pub events: u64,
}

impl GapLog {
    pub fn new() -> Mutex<GapLog> {
        Mutex::new(GapLog {
            logged_at: None,
            aggregates: 0,
            events: 0,
        })
    }
}

pub(crate) struct Delivery {
    pub(crate) message: jetstream::Message,
    pub(crate) event: EventMessage,
}

impl Runner {
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), String> {
        let consumer_name = crate::lag::consumer_name(self.projection, self.partition);
        let stream = self
            .jetstream
            .get_stream(&self.stream)
            .await
            .map_err(|e| e.to_string())?;
        // Deliveries the previous owner held unacknowledged come back only after the ack wait.
        // Those of an aggregate with a later event are filled from the store when it arrives;
        // the last ones of an aggregate would wait. So a takeover that finds any restarts the
        // consumer just past its ack floor: everything after it is delivered again at once,
        // and what was applied already is skipped as a duplicate.
        let mut deliver_policy = jetstream::consumer::DeliverPolicy::All;
        let existing = stream.consumer_info(&consumer_name).await.ok();
        if let Some(info) = &existing
            && info.num_ack_pending == 0
        {
            // A consumer is bound as it is: the server refuses to change where it starts
            // (10012), and one recreated for a takeover starts at a sequence, not at the start.
            deliver_policy = info.config.deliver_policy;
        }
        if let Some(info) = existing
            && info.num_ack_pending > 0
        {
            let start_sequence = info.ack_floor.stream_sequence + 1;
            tracing::info!(
                projection = self.projection.name(),
                partition = self.partition,
                unacknowledged = info.num_ack_pending,
                start_sequence,
                "the partition's last owner left deliveries unacknowledged; redelivering them now"
            );
            stream
                .delete_consumer(&consumer_name)
                .await
                .map_err(|e| e.to_string())?;
            deliver_policy = jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence };
        }
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(consumer_name.clone()),
                filter_subject: self.filter_subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: i64::try_from(self.config.batch_max * 4).unwrap_or(2_000),
                deliver_policy,
                // Only the partition's owner pulls; the pin keeps a worker that lost the
                // partition but has not noticed yet from sharing it (the version checks and the
                // apply lock keep the effects right even then).
                priority_policy: jetstream::consumer::PriorityPolicy::PinnedClient,
                priority_groups: vec![PRIORITY_GROUP.to_owned()],
                priority_timeout: PIN_TIMEOUT,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        // This worker owns the partition now (`partitions`): whoever held the pin before has
        // let go of it or died. Unpinning moves the pin to this worker at its first pull
        // rather than after the pin timeout.
        if let Err(error) = stream.unpin_consumer(&consumer_name, PRIORITY_GROUP).await {
            tracing::debug!(%error, "unpin at takeover failed; the pin moves after its timeout");
        }
        tracing::info!(
            projection = self.projection.name(),
            partition = self.partition,
            "partition taken"
        );
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(self.config.batch_max)
            .expires(Duration::from_secs(2))
            .group(PRIORITY_GROUP)
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        let mut failures = 0u32;
        let mut actions = tokio::time::interval(ACTIONS_POLL);
        actions.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !shutdown.is_cancelled() {
            // Wait for the first event, then take whatever else has already arrived: no added
            // latency when idle, full batches under load.
            let first = tokio::select! {
                () = shutdown.cancelled() => break,
                // Operator actions can concern any aggregate: partition 0's owner (there is
                // always one) carries them out, under every partition's apply lock.
                _ = actions.tick(), if self.partition == 0 => {
                    if let Err(error) = self.carry_out_actions().await {
                        tracing::warn!(%error, "dead-letter actions failed; retrying later");
                    }
                    continue;
                }
                next = messages.next() => next,
            };
            let mut batch = Vec::new();
            match first {
                None => break,
                Some(Ok(message)) => batch.push(message),
                Some(Err(error)) => {
                    tracing::warn!(%error, "pull failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            // Unconstrained: tokio's cooperative budget would otherwise report the channel
            // empty after about 128 receives in one poll, capping every batch there even with
            // thousands of events waiting (so a projection that fell behind caught up slowly).
            while batch.len() < self.config.batch_max {
                match tokio::task::unconstrained(messages.next()).now_or_never() {
                    Some(Some(Ok(message))) => batch.push(message),
                    _ => break,
                }
            }
            match self.process(batch).await {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let pause = (Duration::from_millis(100) * 2u32.saturating_pow(failures.min(6)))
                        .min(FAILURE_DELAY_MAX);
                    tracing::warn!(%error, retry_in_ms = pause.as_millis() as u64, "projection batch failed");
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        // Hand the pin to a standby now rather than after PIN_TIMEOUT.
        drop(messages);
        if let Err(error) = stream.unpin_consumer(&consumer_name, PRIORITY_GROUP).await {
            tracing::debug!(%error, "unpin on shutdown failed; the pin expires by itself");
        }
        tracing::info!(
            projection = self.projection.name(),
            partition = self.partition,
            "partition released"
        );
        Ok(())
    }

    /// Applies one pulled batch. On a database failure every message is nak'ed (nothing was
    /// committed); a poison event is nak'ed alone and the rest of the batch goes on.
    async fn process(&self, messages: Vec<jetstream::Message>) -> Result<(), sqlx::Error> {
        let mut deliveries = Vec::with_capacity(messages.len());
        for message in messages {
            match serde_json::from_slice::<EventMessage>(&message.payload) {
                Ok(event) => deliveries.push(Delivery { message, event }),
                // Nothing the relay publishes fails to parse, so this message came from
                // elsewhere: it can never be applied, and naking it would keep it (and a slot
                // of max_ack_pending) forever.
                Err(error) => self.unreadable(&message, &error).await,
            }
        }
        self.batch_sizes.observe(deliveries.len() as f64);
        match self.apply_batch(&deliveries).await {
            Ok(()) => Ok(()),
            Err(ApplyError::Db(error)) if is_transient(&error) => {
                for d in &deliveries {
                    nak(&d.message, Duration::from_secs(1)).await;
                }
                Err(error)
            }
            Err(first_error) => {
                // Something in the batch cannot be applied. Find it: one event per transaction,
                // in order, so every other event (and aggregate) still goes through.
                if deliveries.len() == 1 {
                    self.failed(&deliveries[0], &first_error).await?;
                    return Ok(());
                }
                for (i, d) in deliveries.iter().enumerate() {
                    match self.apply_batch(std::slice::from_ref(d)).await {
                        Ok(()) => {}
                        Err(ApplyError::Db(error)) if is_transient(&error) => {
                            for rest in &deliveries[i..] {
                                nak(&rest.message, Duration::from_secs(1)).await;
                            }
                            return Err(error);
                        }
                        Err(error) => self.failed(d, &error).await?,
                    }
                }
                Ok(())
            }
        }
    }

    async fn apply_batch(&self, deliveries: &[Delivery]) -> Result<(), ApplyError> {
        let mut tx = self.pool.begin().await?;
        // No row locks below: the apply lock makes this the only writer (write_lock).
        write_lock::apply(&mut tx, self.projection.name(), self.partition).await?;
        let ids: Vec<String> = deliveries
            .iter()
            .map(|d| d.event.aggregate_id.clone())
            .collect();
        // One round trip for both: the versions (the whole key, so an index probe per id
        // rather than a scan of every aggregate the projection has seen) and the aggregates
        // held back by a dead-lettered event.
        let current: Vec<(String, i64, bool)> = sqlx::query_as(
            "SELECT aggregate_id, version, false FROM projection_versions
             WHERE projection = $1 AND aggregate_type = $3 AND aggregate_id = ANY($2)
             UNION ALL
             SELECT aggregate_id, 0, true FROM projection_parked
             WHERE projection = $1 AND aggregate_type = $3 AND aggregate_id = ANY($2)",
        )
        .bind(self.projection.name())
        .bind(&ids)
        .bind(self.projection.aggregate_type())
        .fetch_all(&mut *tx)
        .await?;
        let mut versions: HashMap<String, u64> = HashMap::new();
        let mut parked = std::collections::HashSet::new();
        for (id, version, is_parked) in current {
            if is_parked {
                parked.insert(id);
            } else {
                // CHECK (version > 0) on the table: a stored version is never negative (if it
                // were, 0 would re-apply the aggregate's history on top of itself).
                debug_assert!(
                    version > 0,
                    "projection_versions.version {version} for {id}"
                );
                versions.insert(id, u64::try_from(version).unwrap_or(0));
            }
        }
        // Each aggregate's deliveries in sequence order: what is new, what is a duplicate, and
        // whether the new ones follow the applied version without a hole.
        let mut by_aggregate: BTreeMap<&str, Vec<&Delivery>> = BTreeMap::new();
        for d in deliveries {
            by_aggregate
                .entry(d.event.aggregate_id.as_str())
                .or_default()
                .push(d);
        }
        let mut done = Vec::new();
        let mut gaps = Vec::new();
        let mut held = Vec::new();
        // (aggregate, version before, its new deliveries in order, contiguous from version + 1)
        let mut plans: Vec<(&str, u64, Vec<&Delivery>, bool)> = Vec::new();
        let (mut fill_ids, mut fill_from, mut fill_to) = (Vec::new(), Vec::new(), Vec::new());
        for (id, mut ds) in by_aggregate {
            ds.sort_by_key(|d| d.event.sequence);
            let version = versions.get(id).copied().unwrap_or(0);
            let mut fresh: Vec<&Delivery> = Vec::new();
            for d in ds {
                if d.event.sequence <= version
                    || fresh
                        .last()
                        .is_some_and(|f| f.event.sequence == d.event.sequence)
                {
                    done.push(&d.message); // a duplicate: already applied, or twice in this batch
                } else if parked.contains(id) {
                    held.push(&d.event); // waits behind its aggregate's dead letter
                    done.push(&d.message);
                } else {
                    fresh.push(d);
                }
            }
            let Some(last) = fresh.last() else { continue };
            let last = last.event.sequence;
            let contiguous = fresh
                .iter()
                .zip(version + 1..)
                .all(|(d, expected)| d.event.sequence == expected);
            if !contiguous {
                fill_ids.push(id.to_owned());
                fill_from.push(i64::try_from(version + 1).unwrap_or(i64::MAX));
                fill_to.push(i64::try_from(last - 1).unwrap_or(i64::MAX));
            }
            plans.push((id, version, fresh, contiguous));
        }
        // One read for every hole of the batch.
        let mut filled: HashMap<String, Vec<EventMessage>> = HashMap::new();
        if !fill_ids.is_empty() {
            match event_store::history::aggregate_gaps(
                &mut tx,
                self.projection.aggregate_type(),
                &fill_ids,
                &fill_from,
                &fill_to,
            )
            .await
            {
                Ok(rows) => {
                    for row in rows {
                        match row.into_message() {
                            Ok(event) => filled
                                .entry(event.aggregate_id.clone())
                                .or_default()
                                .push(event),
                            Err(error) => {
                                tracing::warn!(%error, "stored event unreadable; its gap waits for redelivery");
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "gap read failed; the later events come back");
                }
            }
        }
        let mut apply: Vec<EventMessage> = Vec::new();
        let mut changed: Vec<(&str, i64, i64)> = Vec::new();
        let (mut gap_aggregates, mut gap_events) = (0u64, 0u64);
        for (id, version, fresh, contiguous) in plans {
            let mut next = version + 1;
            if !contiguous {
                // The store's events up to the last delivered one's predecessor, then that one
                // (and any delivered in between are the same events: acked as applied).
                let from_store = filled.remove(id).unwrap_or_default();
                let complete = from_store
                    .iter()
                    .zip(version + 1..)
                    .all(|(e, expected)| e.sequence == expected)
                    && from_store.len() as u64 + version + 1
                        == fresh[fresh.len() - 1].event.sequence;
                if complete {
                    let delivered: HashSet<u64> = fresh.iter().map(|d| d.event.sequence).collect();
                    gap_aggregates += 1;
                    gap_events += from_store
                        .iter()
                        .filter(|e| !delivered.contains(&e.sequence))
                        .count() as u64;
                    next += from_store.len() as u64;
                    apply.extend(from_store);
                    let last = fresh[fresh.len() - 1];
                    apply.push(last.event.clone());
                    next += 1;
                    done.extend(fresh.iter().map(|d| &d.message));
                } else {
                    // Not readable now: apply what follows the version without a hole, and
                    // let the rest come back.
                    for d in fresh {
                        if d.event.sequence == next {
                            apply.push(d.event.clone());
                            done.push(&d.message);
                            next += 1;
                        } else {
                            gaps.push(&d.message);
                        }
                    }
                }
            } else {
                for d in fresh {
                    apply.push(d.event.clone());
                    done.push(&d.message);
                    next += 1;
                }
            }
            if next > version + 1 {
                changed.push((
                    id,
                    i64::try_from(version).unwrap_or(i64::MAX),
                    i64::try_from(next - 1).unwrap_or(i64::MAX),
                ));
            }
        }
        for event in held {
            sqlx::query(
                "INSERT INTO projection_parked_events (projection, aggregate_type, aggregate_id, sequence, event)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(self.projection.name())
            .bind(&event.aggregate_type)
            .bind(&event.aggregate_id)
            .bind(i64::try_from(event.sequence).unwrap_or(i64::MAX))
            .bind(sqlx::types::Json(event))
            .execute(&mut *tx)
            .await?;
        }
        // Versions first (sorted, as by_aggregate is, so concurrent transactions lock rows in
        // the same order), the read-model rows last: the one row partitions share,
        // `currency_totals`, is then locked only from the last statement to the commit.
        let last_stream_sequence = deliveries
            .iter()
            .filter_map(|d| d.message.info().ok().map(|i| i.stream_sequence))
            .max()
            .unwrap_or(0);
        let mut ids = Vec::with_capacity(changed.len());
        let mut previous = Vec::with_capacity(changed.len());
        let mut seqs = Vec::with_capacity(changed.len());
        for (id, before, after) in changed {
            ids.push(id);
            previous.push(before);
            seqs.push(after);
        }
        let recorded = versions::record_with_checkpoint(
            &mut tx,
            self.projection,
            self.partition,
            &ids,
            &previous,
            &seqs,
            i64::try_from(last_stream_sequence).unwrap_or(i64::MAX),
            i64::try_from(apply.len()).unwrap_or(i64::MAX),
        )
        .await?;
        if !recorded.moved {
            // Another writer applied some of these aggregates since this batch read their
            // versions: nothing of this batch counts; it comes back and is checked afresh.
            tx.rollback().await?;
            tracing::warn!(
                projection = self.projection.name(),
                partition = self.partition,
                "batch raced another writer of the same aggregates; retrying it"
            );
            for d in deliveries {
                nak(&d.message, RACED_RETRY_DELAY).await;
            }
            return Ok(());
        }
        if !apply.is_empty() {
            self.projection
                .apply(
                    &mut tx,
                    &apply,
                    self.partition,
                    crate::accounts::FeedOrder::Batch {
                        first_position: recorded.first_position,
                    },
                )
                .await?;
        }
        tx.commit().await?;
        if gap_aggregates > 0 {
            self.gap_filled(gap_aggregates, gap_events);
        }
        let committed_at = chrono::Utc::now();
        for event in &apply {
            let delay = (committed_at - event.recorded_at)
                .num_microseconds()
                .unwrap_or(0);
            self.event_delays.observe(delay.max(0) as f64 / 1e6);
        }
        // The read-model update's hop in each event's trace (the command's trace id).
        for event in &apply {
            let applied = tracing::debug_span!(
                "project",
                projection = self.projection.name(),
                aggregate_id = %event.aggregate_id,
                sequence = event.sequence,
                trace_id = event.metadata.get("trace_id").and_then(|v| v.as_str()).unwrap_or(""),
            );
            platform::telemetry::continue_trace(
                &applied,
                event.metadata.get("traceparent").and_then(|v| v.as_str()),
            );
            let _entered = applied.entered();
        }
        // After the commit: a crash before these acks only causes redeliveries, which the
        // version check turns into no-ops.
        for message in done {
            if let Err(error) = message.ack().await {
                tracing::debug!(%error, "ack failed; the event comes back and is skipped");
            }
        }
        for message in gaps {
            nak(message, GAP_RETRY_DELAY).await;
        }
        Ok(())
    }
}

impl Runner {
    /// Counts gaps filled from the event store and logs them, at most every `GAP_LOG_EVERY`:
    /// after a takeover every aggregate the previous owner held deliveries of has one.
    fn gap_filled(&self, aggregates: u64, events: u64) {
        let Ok(mut log) = self.gap_log.lock() else {
            return;
        };
        log.aggregates += aggregates;
        log.events += events;
        if log.logged_at.is_none_or(|at| at.elapsed() >= GAP_LOG_EVERY) {
            tracing::warn!(
                projection = self.projection.name(),
                partition = self.partition,
                aggregates = log.aggregates,
                events = log.events,
                "filled gaps from the event store (deliveries held by a worker that stopped, or redelivered late); they arrive later as duplicates"
            );
            log.logged_at = Some(Instant::now());
            log.aggregates = 0;
            log.events = 0;
        }
    }
}

/// Failures worth retrying as they are (the database or the network), as opposed to an event
/// that can never be applied as it stands.
///
/// The outages and rollbacks are the event store's own (`event_store::error::is_outage`,
/// `is_rolled_back`), plus sqlx's protocol errors, retried here as before. Not `classify`,
/// which calls a unique violation a lost race: here, with the apply lock making this worker
/// the only writer, that is an event that cannot be applied.
pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    event_store::error::is_outage(error)
        || event_store::error::is_rolled_back(error)
        || matches!(error, sqlx::Error::Protocol(_))
}

pub(crate) async fn nak(message: &jetstream::Message, delay: Duration) {
    if let Err(error) = message.ack_with(AckKind::Nak(Some(delay))).await {
        tracing::debug!(%error, "nak failed; the event comes back after the ack wait");
    }
}
