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

use crate::accounts;

/// A delivery not acknowledged within this comes back (batches commit far sooner).
const ACK_WAIT: Duration = Duration::from_secs(30);
/// A gap's later event is offered again after this.
const GAP_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Longest pause after a database failure.
const FAILURE_DELAY_MAX: Duration = Duration::from_secs(5);
/// How often operator actions on parked aggregates (`tally dlq retry|drop`) are looked for.
const ACTIONS_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("database")]
    Db(#[from] sqlx::Error),
    #[error("event {aggregate_id}#{sequence} cannot be applied: {reason}")]
    Poison {
        aggregate_id: String,
        sequence: u64,
        reason: String,
    },
}

impl ApplyError {
    pub fn poison(event: &EventMessage, reason: impl Into<String>) -> Self {
        ApplyError::Poison {
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence,
            reason: reason.into(),
        }
    }
}

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
    /// `<prefix>.evt.account.>`
    pub filter_subject: String,
    /// `<prefix>.dlq.accounts`
    pub dead_letter_subject: String,
    pub config: RunnerConfig,
}

struct Delivery {
    message: jetstream::Message,
    event: EventMessage,
}

impl Runner {
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), String> {
        let consumer = self
            .jetstream
            .get_stream(&self.stream)
            .await
            .map_err(|e| e.to_string())?
            .create_consumer(pull::Config {
                durable_name: Some(format!("projection-{}", accounts::NAME)),
                filter_subject: self.filter_subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: i64::try_from(self.config.batch_max * 4).unwrap_or(2_000),
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(self.config.batch_max)
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
            while batch.len() < self.config.batch_max {
                match messages.next().now_or_never() {
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
        tracing::info!(projection = accounts::NAME, "projection stopped");
        Ok(())
    }

    /// Applies one pulled batch. On a database failure every message is nak'ed (nothing was
    /// committed); a poison event is nak'ed alone and the rest of the batch goes on.
    async fn process(&self, messages: Vec<jetstream::Message>) -> Result<(), sqlx::Error> {
        let mut deliveries = Vec::with_capacity(messages.len());
        for message in messages {
            match serde_json::from_slice::<EventMessage>(&message.payload) {
                Ok(event) => deliveries.push(Delivery { message, event }),
                Err(error) => {
                    tracing::error!(%error, subject = %message.subject, "unreadable event message");
                    nak(&message, FAILURE_DELAY_MAX).await;
                }
            }
        }
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

    /// An event failed on its own: nak it for another try, or, after `poison_attempts`
    /// deliveries, dead-letter it and park its aggregate.
    async fn failed(&self, d: &Delivery, error: &ApplyError) -> Result<(), sqlx::Error> {
        let attempts = d.message.info().map(|i| i.delivered).unwrap_or(1);
        tracing::error!(
            projection = accounts::NAME,
            aggregate_id = %d.event.aggregate_id,
            sequence = d.event.sequence,
            attempts,
            error = %error_text(error),
            "event cannot be applied"
        );
        if attempts < self.config.poison_attempts {
            let backoff = Duration::from_millis(200)
                * 2u32.saturating_pow(u32::try_from(attempts).unwrap_or(6).min(6));
            nak(&d.message, backoff.min(FAILURE_DELAY_MAX)).await;
            return Ok(());
        }
        let reason = error_text(error);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!(
                "{}:{}:{}:{}",
                accounts::NAME,
                d.event.aggregate_type,
                d.event.aggregate_id,
                d.event.sequence
            )
            .as_str(),
        );
        headers.insert("Tally-Projection", accounts::NAME);
        headers.insert("Tally-Aggregate-Id", d.event.aggregate_id.as_str());
        headers.insert("Tally-Sequence", d.event.sequence.to_string().as_str());
        headers.insert(
            "Tally-Error",
            reason.chars().take(1_000).collect::<String>().as_str(),
        );
        let published = async {
            self.jetstream
                .publish_with_headers(
                    self.dead_letter_subject.clone(),
                    headers,
                    d.message.payload.clone(),
                )
                .await?
                .await
        }
        .await;
        if let Err(error) = published {
            // Without the dead letter the event must not be parked silently: try again later.
            tracing::warn!(%error, "dead-letter publish failed");
            nak(&d.message, FAILURE_DELAY_MAX).await;
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO projection_parked (projection, aggregate_type, aggregate_id, sequence, event, error, attempts)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (projection, aggregate_type, aggregate_id) DO NOTHING",
        )
        .bind(accounts::NAME)
        .bind(&d.event.aggregate_type)
        .bind(&d.event.aggregate_id)
        .bind(i64::try_from(d.event.sequence).unwrap_or(i64::MAX))
        .bind(sqlx::types::Json(&d.event))
        .bind(&reason)
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .execute(&self.pool)
        .await?;
        tracing::warn!(aggregate_id = %d.event.aggregate_id, sequence = d.event.sequence, "dead-lettered; the aggregate is parked until `tally dlq retry` or `drop`");
        if let Err(error) = d.message.ack().await {
            tracing::debug!(%error, "ack of a dead-lettered event failed; it comes back and is parked again");
        }
        Ok(())
    }

    async fn apply_batch(&self, deliveries: &[Delivery]) -> Result<(), ApplyError> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<String> = deliveries
            .iter()
            .map(|d| d.event.aggregate_id.clone())
            .collect();
        let current: Vec<(String, i64)> = sqlx::query_as(
            "SELECT aggregate_id, version FROM projection_versions
             WHERE projection = $1 AND aggregate_type = 'account' AND aggregate_id = ANY($2)
             FOR UPDATE",
        )
        .bind(accounts::NAME)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut versions: HashMap<String, u64> = current
            .into_iter()
            .map(|(id, v)| (id, u64::try_from(v).unwrap_or(0)))
            .collect();
        // Aggregates held back by a dead-lettered event. FOR SHARE: an operator action
        // releasing one (which locks it FOR UPDATE) finishes before we decide.
        let parked: std::collections::HashSet<String> = sqlx::query_scalar(
            "SELECT aggregate_id FROM projection_parked
             WHERE projection = $1 AND aggregate_type = 'account' AND aggregate_id = ANY($2)
             FOR SHARE",
        )
        .bind(accounts::NAME)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
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
            .bind(accounts::NAME)
            .bind(&event.aggregate_type)
            .bind(&event.aggregate_id)
            .bind(i64::try_from(event.sequence).unwrap_or(i64::MAX))
            .bind(sqlx::types::Json(event))
            .execute(&mut *tx)
            .await?;
        }
        if !apply.is_empty() {
            accounts::apply(&mut tx, &apply).await?;
            let changed: HashMap<&str, u64> = apply
                .iter()
                .map(|e| (e.aggregate_id.as_str(), versions[&e.aggregate_id]))
                .collect();
            let (ids, seqs): (Vec<&str>, Vec<i64>) = changed
                .into_iter()
                .map(|(id, v)| (id, i64::try_from(v).unwrap_or(i64::MAX)))
                .unzip();
            sqlx::query(
                "INSERT INTO projection_versions (projection, aggregate_type, aggregate_id, version)
                 SELECT $1, 'account', id, v FROM UNNEST($2::text[], $3::bigint[]) AS t(id, v)
                 ON CONFLICT (projection, aggregate_type, aggregate_id) DO UPDATE SET version = EXCLUDED.version",
            )
            .bind(accounts::NAME)
            .bind(&ids)
            .bind(&seqs)
            .execute(&mut *tx)
            .await?;
        }
        let last_stream_sequence = deliveries
            .iter()
            .filter_map(|d| d.message.info().ok().map(|i| i.stream_sequence))
            .max()
            .unwrap_or(0);
        sqlx::query(
            "INSERT INTO projection_checkpoints (projection, stream_sequence, events_applied)
             VALUES ($1, $2, $3)
             ON CONFLICT (projection) DO UPDATE SET
                 stream_sequence = GREATEST(projection_checkpoints.stream_sequence, EXCLUDED.stream_sequence),
                 events_applied = projection_checkpoints.events_applied + EXCLUDED.events_applied,
                 updated_at = now()",
        )
        .bind(accounts::NAME)
        .bind(i64::try_from(last_stream_sequence).unwrap_or(i64::MAX))
        .bind(i64::try_from(apply.len()).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
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
    /// Carries out `tally dlq retry|drop` on parked aggregates: retry applies the dead-lettered
    /// event and then the parked ones, in order; drop skips the dead-lettered event (an operator
    /// decision, logged) and applies the parked ones. One transaction per aggregate; on failure
    /// the aggregate stays parked with the new error.
    async fn carry_out_actions(&self) -> Result<(), sqlx::Error> {
        let requested: Vec<(String, String)> = sqlx::query_as(
            "SELECT aggregate_id, action FROM projection_parked
             WHERE projection = $1 AND aggregate_type = 'account' AND action IS NOT NULL",
        )
        .bind(accounts::NAME)
        .fetch_all(&self.pool)
        .await?;
        for (aggregate_id, action) in requested {
            let outcome = self.release(&aggregate_id, action == "retry").await;
            match outcome {
                Ok(applied) => {
                    tracing::info!(aggregate_id, action, applied, "parked aggregate released")
                }
                Err(error) => {
                    let reason = error_text(&error);
                    tracing::warn!(aggregate_id, action, error = %reason, "parked aggregate stays parked");
                    sqlx::query(
                        "UPDATE projection_parked SET action = NULL, error = $3, attempts = attempts + 1
                         WHERE projection = $1 AND aggregate_type = 'account' AND aggregate_id = $2",
                    )
                    .bind(accounts::NAME)
                    .bind(&aggregate_id)
                    .bind(&reason)
                    .execute(&self.pool)
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// `Ok(None)`: not yet possible (a parked event is still in flight); the action stays.
    async fn release(&self, aggregate_id: &str, retry: bool) -> Result<Option<usize>, ApplyError> {
        let mut tx = self.pool.begin().await?;
        let head: Option<(sqlx::types::Json<EventMessage>,)> = sqlx::query_as(
            "SELECT event FROM projection_parked
             WHERE projection = $1 AND aggregate_type = 'account' AND aggregate_id = $2
             FOR UPDATE",
        )
        .bind(accounts::NAME)
        .bind(aggregate_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((head,)) = head else {
            return Ok(Some(0));
        };
        let parked: Vec<sqlx::types::Json<EventMessage>> = sqlx::query_scalar(
            "SELECT event FROM projection_parked_events
             WHERE projection = $1 AND aggregate_type = 'account' AND aggregate_id = $2
             ORDER BY sequence",
        )
        .bind(accounts::NAME)
        .bind(aggregate_id)
        .fetch_all(&mut *tx)
        .await?;
        let version: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT version FROM projection_versions
              WHERE projection = $1 AND aggregate_type = 'account' AND aggregate_id = $2 FOR UPDATE), 0)",
        )
        .bind(accounts::NAME)
        .bind(aggregate_id)
        .fetch_one(&mut *tx)
        .await?;
        let mut expected = u64::try_from(version).unwrap_or(0) + 1;
        let mut events = Vec::new();
        if retry {
            events.push(head.0.clone());
        } else {
            tracing::warn!(
                aggregate_id,
                sequence = head.0.sequence,
                "operator dropped a dead-lettered event"
            );
            expected = head.0.sequence + 1;
        }
        events.extend(
            parked
                .into_iter()
                .map(|e| e.0)
                .filter(|e| e.sequence > head.0.sequence),
        );
        // Apply the contiguous run; anything after a gap stays for JetStream to redeliver.
        let first = expected;
        let mut run: Vec<EventMessage> = Vec::new();
        for event in events.into_iter().filter(|e| e.sequence >= first) {
            if event.sequence != expected {
                // A parked event is missing (not redelivered yet): releasing now would leave
                // the later ones behind. Keep everything parked and try again next tick.
                tracing::info!(
                    aggregate_id,
                    missing = expected,
                    "parked events incomplete; release waits"
                );
                return Ok(None);
            }
            expected += 1;
            run.push(event);
        }
        let last = run.last().map_or(expected - 1, |e| e.sequence);
        if !run.is_empty() {
            accounts::apply(&mut tx, &run).await?;
        }
        sqlx::query(
            "INSERT INTO projection_versions (projection, aggregate_type, aggregate_id, version)
             VALUES ($1, 'account', $2, $3)
             ON CONFLICT (projection, aggregate_type, aggregate_id) DO UPDATE SET version = EXCLUDED.version",
        )
        .bind(accounts::NAME)
        .bind(aggregate_id)
        .bind(i64::try_from(last).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO projection_checkpoints (projection, events_applied, events_dropped)
             VALUES ($1, $2, $3)
             ON CONFLICT (projection) DO UPDATE SET
                 events_applied = projection_checkpoints.events_applied + EXCLUDED.events_applied,
                 events_dropped = projection_checkpoints.events_dropped + EXCLUDED.events_dropped,
                 updated_at = now()",
        )
        .bind(accounts::NAME)
        .bind(i64::try_from(run.len()).unwrap_or(i64::MAX))
        .bind(i64::from(!retry))
        .execute(&mut *tx)
        .await?;
        for table in ["projection_parked_events", "projection_parked"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE projection = $1 AND aggregate_type = 'account' AND aggregate_id = $2"
            ))
            .bind(accounts::NAME)
            .bind(aggregate_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(run.len()))
    }
}

/// Failures worth retrying as they are (the database or the network), as opposed to an event
/// that can never be applied as it stands.
fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            ["08", "40", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        _ => false,
    }
}

fn error_text(error: &ApplyError) -> String {
    match error {
        ApplyError::Db(sqlx::Error::Database(db)) => format!("database: {}", db.message()),
        other => other.to_string(),
    }
}

async fn nak(message: &jetstream::Message, delay: Duration) {
    if let Err(error) = message.ack_with(AckKind::Nak(Some(delay))).await {
        tracing::debug!(%error, "nak failed; the event comes back after the ack wait");
    }
}
