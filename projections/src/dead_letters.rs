//! Poison events: dead-lettering after N deliveries, parking the aggregate behind them, and
//! carrying out an operator's `tally dlq retry|drop`.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use domain::envelope::EventMessage;

use crate::apply_error::ApplyError;
use crate::runner::{Delivery, FAILURE_DELAY_MAX, Runner, nak};
use crate::write_lock;

impl Runner {
    /// An event failed on its own: nak it for another try, or, after `poison_attempts`
    /// deliveries, dead-letter it and park its aggregate.
    pub(crate) async fn failed(&self, d: &Delivery, error: &ApplyError) -> Result<(), sqlx::Error> {
        let attempts = d.message.info().map(|i| i.delivered).unwrap_or(1);
        tracing::error!(
            projection = self.projection.name(),
            aggregate_id = %d.event.aggregate_id,
            sequence = d.event.sequence,
            attempts,
            error = %error.dead_letter_text(),
            "event cannot be applied"
        );
        if attempts < self.config.poison_attempts {
            let backoff = Duration::from_millis(200)
                * 2u32.saturating_pow(u32::try_from(attempts).unwrap_or(6).min(6));
            nak(&d.message, backoff.min(FAILURE_DELAY_MAX)).await;
            return Ok(());
        }
        let reason = error.dead_letter_text();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!(
                "{}:{}:{}:{}",
                self.projection.name(),
                d.event.aggregate_type,
                d.event.aggregate_id,
                d.event.sequence
            )
            .as_str(),
        );
        headers.insert("Tally-Projection", self.projection.name());
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
        .bind(self.projection.name())
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
}

impl Runner {
    /// A message on the events stream that is not an event: dead-lettered with the reason and
    /// terminated, never redelivered. No aggregate is parked: it names none that can be trusted.
    pub(crate) async fn unreadable(&self, message: &jetstream::Message, error: &serde_json::Error) {
        let stream_sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        tracing::error!(
            projection = self.projection.name(),
            %error,
            stream_sequence,
            "unreadable event message; dead-lettered and terminated"
        );
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("{}:unreadable:{stream_sequence}", self.projection.name()).as_str(),
        );
        headers.insert("Tally-Projection", self.projection.name());
        headers.insert(
            "Tally-Stream-Sequence",
            stream_sequence.to_string().as_str(),
        );
        headers.insert(
            "Tally-Error",
            format!("unreadable event message: {error}")
                .chars()
                .take(1_000)
                .collect::<String>()
                .as_str(),
        );
        let published = async {
            self.jetstream
                .publish_with_headers(
                    self.dead_letter_subject.clone(),
                    headers,
                    message.payload.clone(),
                )
                .await?
                .await
        }
        .await;
        if let Err(error) = published {
            tracing::warn!(%error, "dead-letter publish failed; the message comes back later");
            nak(message, FAILURE_DELAY_MAX).await;
            return;
        }
        if let Err(error) = message.ack_with(AckKind::Term).await {
            tracing::debug!(%error, "term of an unreadable message failed; it comes back and is dead-lettered again");
        }
    }

    /// Carries out `tally dlq retry|drop` on parked aggregates: retry applies the dead-lettered
    /// event and then the parked ones, in order; drop skips the dead-lettered event (an operator
    /// decision, logged) and applies the parked ones. One transaction per aggregate; on failure
    /// the aggregate stays parked with the new error.
    pub(crate) async fn carry_out_actions(&self) -> Result<(), sqlx::Error> {
        let requested: Vec<(String, String)> = sqlx::query_as(
            "SELECT aggregate_id, action FROM projection_parked
             WHERE projection = $1 AND action IS NOT NULL",
        )
        .bind(self.projection.name())
        .fetch_all(&self.pool)
        .await?;
        for (aggregate_id, action) in requested {
            let outcome = self.release(&aggregate_id, action == "retry").await;
            match outcome {
                Ok(applied) => {
                    tracing::info!(aggregate_id, action, applied, "parked aggregate released")
                }
                Err(error) => {
                    let reason = error.dead_letter_text();
                    tracing::warn!(aggregate_id, action, error = %reason, "parked aggregate stays parked");
                    sqlx::query(
                        "UPDATE projection_parked SET action = NULL, error = $3, attempts = attempts + 1
                         WHERE projection = $1 AND aggregate_id = $2",
                    )
                    .bind(self.projection.name())
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
        // The aggregate's partition is not known here (the stream's hash decides it): hold
        // them all, which only the rare operator action pays for.
        write_lock::apply_all(&mut tx, self.projection.name(), self.partitions).await?;
        let head: Option<(sqlx::types::Json<EventMessage>,)> = sqlx::query_as(
            "SELECT event FROM projection_parked
             WHERE projection = $1 AND aggregate_id = $2
             FOR UPDATE",
        )
        .bind(self.projection.name())
        .bind(aggregate_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((head,)) = head else {
            return Ok(Some(0));
        };
        let parked: Vec<sqlx::types::Json<EventMessage>> = sqlx::query_scalar(
            "SELECT event FROM projection_parked_events
             WHERE projection = $1 AND aggregate_id = $2
             ORDER BY sequence",
        )
        .bind(self.projection.name())
        .bind(aggregate_id)
        .fetch_all(&mut *tx)
        .await?;
        let version: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT version FROM projection_versions
              WHERE projection = $1 AND aggregate_id = $2 FOR UPDATE), 0)",
        )
        .bind(self.projection.name())
        .bind(aggregate_id)
        .fetch_one(&mut *tx)
        .await?;
        // 0: nothing applied yet. CHECK (version > 0) on the table: never negative.
        debug_assert!(version >= 0, "projection_versions.version {version}");
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
            self.projection
                .apply(
                    &mut tx,
                    &run,
                    self.partition,
                    crate::accounts::FeedOrder::Unordered,
                )
                .await?;
        }
        sqlx::query(
            "INSERT INTO projection_versions (projection, aggregate_type, aggregate_id, version)
             VALUES ($1, $4, $2, $3)
             ON CONFLICT (projection, aggregate_type, aggregate_id) DO UPDATE SET version = EXCLUDED.version",
        )
        .bind(self.projection.name())
        .bind(aggregate_id)
        .bind(i64::try_from(last).unwrap_or(i64::MAX))
        .bind(self.projection.aggregate_type())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO projection_partition_checkpoints (projection, partition, events_applied, events_dropped)
             VALUES ($1, $4, $2, $3)
             ON CONFLICT (projection, partition) DO UPDATE SET
                 events_applied = projection_partition_checkpoints.events_applied + EXCLUDED.events_applied,
                 events_dropped = projection_partition_checkpoints.events_dropped + EXCLUDED.events_dropped,
                 updated_at = now()",
        )
        .bind(self.projection.name())
        .bind(i64::try_from(run.len()).unwrap_or(i64::MAX))
        .bind(i64::from(!retry))
        .bind(i32::try_from(self.partition).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await?;
        for table in ["projection_parked_events", "projection_parked"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE projection = $1 AND aggregate_id = $2"
            ))
            .bind(self.projection.name())
            .bind(aggregate_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(run.len()))
    }
}
