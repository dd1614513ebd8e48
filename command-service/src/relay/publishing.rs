//! One batch of the relay's loop: read the next committed events, publish them pipelined and
//! chained by expected stream sequence, and move the position over the prefix JetStream
//! confirmed stored.

use std::collections::BTreeSet;

use async_nats::jetstream::context::PublishAckFuture;
use event_store::outbox::{self, CommitPosition};
use event_store::{RawEvent, RelayCheckpoint};
use sqlx::PgConnection;

use super::message::{self, relayed_metadata};
use super::{Position, Relay, RelayError};

/// How far the acknowledgements of a batch confirm it.
struct Confirmed {
    /// Rows confirmed stored, from the first: the batch's stored prefix.
    rows: usize,
    /// The stream sequence of the last of them.
    last_sequence: u64,
    /// A duplicate ack (stored before) broke the chain: the rest is read again at once.
    chain_broken: bool,
    /// Why the prefix ends before the batch does, if it failed.
    failure: Option<RelayError>,
}

impl Relay {
    /// Publishes the next batch of committed events and moves `position` over the rows
    /// confirmed stored, in order, up to the first that is not. Returns the rows read and
    /// whether some of them are left to publish right away.
    pub(super) async fn publish_batch(
        &self,
        conn: &mut PgConnection,
        position: &mut Position,
        already_stored: &mut BTreeSet<CommitPosition>,
    ) -> Result<(usize, bool), RelayError> {
        let rows = outbox::committed_after(conn, position.position, self.config.batch_max).await?;
        if rows.is_empty() {
            return Ok((0, false));
        }
        let acks = self
            .send_all(&rows, position.stream_sequence, already_stored)
            .await?;
        let confirmed = confirm(acks, position.stream_sequence).await;
        if let Some(last) = confirmed.rows.checked_sub(1).and_then(|i| rows.get(i)) {
            *position = RelayCheckpoint {
                position: last.position(),
                stream_sequence: confirmed.last_sequence,
            };
            already_stored.retain(|stored| *stored > position.position);
        }
        self.observe_delays(&rows[..confirmed.rows]);
        if let Some(error) = confirmed.failure {
            // Also when the stream was recreated or lost messages while we ran (the chain
            // refuses every message then): the next leader term reconciles first.
            tracing::warn!(
                confirmed = confirmed.rows,
                unconfirmed = rows.len() - confirmed.rows,
                "publication stopped at the first event not confirmed stored"
            );
            return Err(error);
        }
        tracing::debug!(
            published = confirmed.rows,
            stream_sequence = position.stream_sequence,
            "relayed"
        );
        Ok((
            rows.len(),
            confirmed.chain_broken && confirmed.rows < rows.len(),
        ))
    }

    /// Sends every row not already stored, then returns their acks unawaited (one round trip
    /// per batch). Each message expects the stream to end where the one before it will have
    /// put it, so once one is not stored, the server stores none after it: the stream stays a
    /// gapless prefix of the outbox, in order, whatever fails.
    async fn send_all(
        &self,
        rows: &[RawEvent],
        base: u64,
        already_stored: &BTreeSet<CommitPosition>,
    ) -> Result<Vec<Option<PublishAckFuture>>, RelayError> {
        let mut acks = Vec::with_capacity(rows.len());
        let mut sent = 0u64;
        let fault = self.injected_fault(rows.len());
        for (index, row) in rows.iter().enumerate() {
            if already_stored.contains(&row.position()) {
                acks.push(None);
                continue;
            }
            let metadata = relayed_metadata(row);
            // One span per event, carrying the command's trace id: the relay's hop in the trace.
            let span = tracing::debug_span!(
                "relay_publish",
                aggregate_type = %row.aggregate_type,
                aggregate_id = %row.aggregate_id,
                sequence = row.sequence,
                trace_id = metadata.trace_id.as_deref().unwrap_or(""),
            );
            platform::telemetry::continue_trace(&span, metadata.traceparent.as_deref());
            let (subject, publish) = message::message(&self.subjects, row, &metadata)?;
            let mut publish = publish.expected_last_sequence(base + sent);
            if fault == Some(index) {
                // The server refuses a message that names another stream: nothing is stored.
                publish = publish.expected_stream("TALLY_INJECTED_FAULT");
            }
            let ack = tracing::Instrument::instrument(
                self.jetstream.send_publish(subject, publish),
                span,
            )
            .await?;
            acks.push(Some(ack));
            sent += 1;
        }
        Ok(acks)
    }

    /// Each event's time from its commit to JetStream's acknowledgement.
    fn observe_delays(&self, confirmed: &[RawEvent]) {
        let Some(delays) = &self.delays else { return };
        let acked_at = chrono::Utc::now();
        for row in confirmed {
            // Microseconds overflow only past 292,000 years; clocks that disagree give
            // negative delays, counted as none.
            if let Some(delay) = (acked_at - row.recorded_at).num_microseconds() {
                delays.observe(delay.max(0) as f64 / 1e6);
            }
        }
    }
}

/// Walks the acks in order and stops at the first row not confirmed stored. What follows it
/// was refused by the chain, and is read again from the position.
async fn confirm(acks: Vec<Option<PublishAckFuture>>, base: u64) -> Confirmed {
    let mut confirmed = Confirmed {
        rows: 0,
        last_sequence: base,
        chain_broken: false,
        failure: None,
    };
    for ack in acks {
        let Some(ack) = ack else {
            confirmed.rows += 1;
            continue;
        };
        match ack.await {
            Ok(ack) if ack.duplicate => {
                // Stored before (the stream dropped this copy); the stream did not grow, so
                // the messages after it expected a sequence that never came.
                confirmed.rows += 1;
                confirmed.chain_broken = true;
                break;
            }
            Ok(ack) if ack.sequence == confirmed.last_sequence + 1 => {
                confirmed.last_sequence = ack.sequence;
                confirmed.rows += 1;
            }
            Ok(ack) => {
                confirmed.failure = Some(RelayError::Stream(format!(
                    "stored at stream sequence {} where {} was expected",
                    ack.sequence,
                    confirmed.last_sequence + 1
                )));
                break;
            }
            Err(error) => {
                confirmed.failure = Some(error.into());
                break;
            }
        }
    }
    confirmed
}
