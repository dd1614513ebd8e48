//! The projection worker loop: a durable pull consumer on the events stream, one transaction
//! per batch (read-model rows + per-aggregate versions + checkpoint), acks after the commit.
//!
//! Exactly-once effects come from the transaction, not from JetStream: an event whose sequence
//! is at or below the aggregate's applied version is a duplicate (acked, not applied); one
//! above `version + 1` is a gap (JetStream redelivers out of order, nats-server #6114), and is
//! nak'ed to come back after the missing one, never skipped. Catch-up and live are this one loop.

use std::collections::HashMap;
use std::time::Duration;

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
/// A gap's later event is offered again after this.
const GAP_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Longest pause after a database failure.
pub(crate) const FAILURE_DELAY_MAX: Duration = Duration::from_secs(5);
/// The priority group the workers of a projection pull with; one is pinned at a time.
const PRIORITY_GROUP: &str = "workers";
/// How long the pinned worker may stop pulling before a standby takes over.
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
    /// `<prefix>.evt.<aggregate type>.>`
    pub filter_subject: String,
    /// `<prefix>.dlq.<projection>`
    pub dead_letter_subject: String,
    pub config: RunnerConfig,
    /// Events per applied batch.
    pub batch_sizes: prometheus::Histogram,
    /// From each applied event's recording to the read model's commit.
    pub event_delays: prometheus::Histogram,
}

pub(crate) struct Delivery {
    pub(crate) message: jetstream::Message,
    pub(crate) event: EventMessage,
}

impl Runner {
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), String> {
        let consumer = self
            .jetstream
            .get_stream(&self.stream)
            .await
            .map_err(|e| e.to_string())?
            .create_consumer(pull::Config {
                durable_name: Some(crate::lag::consumer_name(self.projection)),
                filter_subject: self.filter_subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: i64::try_from(self.config.batch_max * 4).unwrap_or(2_000),
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                // One active worker per projection; others stand by and take over when it stops
                // pulling. Sharing the consumer would split an aggregate's events between
                // workers and turn most of them into gaps.
                priority_policy: jetstream::consumer::PriorityPolicy::PinnedClient,
                priority_groups: vec![PRIORITY_GROUP.to_owned()],
                priority_timeout: PIN_TIMEOUT,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
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
                _ = actions.tick() => {
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
        if let Ok(stream) = self.jetstream.get_stream(&self.stream).await
            && let Err(error) = stream
                .unpin_consumer(&crate::lag::consumer_name(self.projection), PRIORITY_GROUP)
                .await
        {
            tracing::debug!(%error, "unpin on shutdown failed; the pin expires by itself");
        }
        tracing::info!(projection = self.projection.name(), "projection stopped");
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
        write_lock::apply(&mut tx, self.projection.name()).await?;
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
        let mut apply = Vec::new();
        let mut done = Vec::new();
        let mut gaps = Vec::new();
        let mut held = Vec::new();
        for d in deliveries {
            let version = versions.get(&d.event.aggregate_id).copied().unwrap_or(0);
            if d.event.sequence <= version {
                done.push(&d.message); // a duplicate: already applied
            } else if parked.contains(&d.event.aggregate_id) {
                held.push(&d.event); // waits behind its aggregate's dead letter
                done.push(&d.message);
            } else if d.event.sequence == version + 1 {
                versions.insert(d.event.aggregate_id.clone(), d.event.sequence);
                apply.push(d.event.clone());
                done.push(&d.message);
            } else {
                gaps.push(&d.message); // its predecessor has not arrived yet
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
        let mut changed: Vec<(&str, i64)> = Vec::new();
        if !apply.is_empty() {
            self.projection.apply(&mut tx, &apply).await?;
            let latest: HashMap<&str, u64> = apply
                .iter()
                .map(|e| (e.aggregate_id.as_str(), versions[&e.aggregate_id]))
                .collect();
            changed = latest
                .into_iter()
                .map(|(id, v)| (id, i64::try_from(v).unwrap_or(i64::MAX)))
                .collect();
            // Sorted, so concurrent transactions lock rows in the same order (no deadlocks).
            changed.sort_unstable();
        }
        let last_stream_sequence = deliveries
            .iter()
            .filter_map(|d| d.message.info().ok().map(|i| i.stream_sequence))
            .max()
            .unwrap_or(0);
        let (ids, seqs): (Vec<&str>, Vec<i64>) = changed.into_iter().unzip();
        versions::record_with_checkpoint(
            &mut tx,
            self.projection,
            &ids,
            &seqs,
            i64::try_from(last_stream_sequence).unwrap_or(i64::MAX),
            i64::try_from(apply.len()).unwrap_or(i64::MAX),
        )
        .await?;
        tx.commit().await?;
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
