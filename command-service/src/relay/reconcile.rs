//! Start-up reconciliation of the relay's checkpoint with what the stream really holds,
//! verified message by message (`Nats-Msg-Id`), never inferred from the stream's last message.
//!
//! Since every publication carries `Nats-Expected-Last-Sequence` (see the module above), the
//! stream is the outbox's prefix, in outbox order, without gaps: the messages after the
//! checkpoint's stream sequence are the rows after the checkpoint, one for one. The walk below
//! checks exactly that and moves the checkpoint over each match, so what a crash left
//! unconfirmed is neither published twice (whatever the duplicate window) nor skipped. A stream
//! that breaks the rule (written by an older relay with a gap, or by another publisher) stops
//! the walk at the first mismatch; the rows of the messages behind it are remembered, so they
//! are not published a second time while the missing ones are.

use std::collections::BTreeSet;

use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use domain::envelope;
use event_store::outbox::{self, CommitPosition};

use super::{Position, Relay, RelayError, START};

/// Outbox rows read per query during the walk.
const WALK_PAGE: i64 = 500;
/// Most stream messages out of outbox order whose rows are remembered (not published again).
/// Only a stream written before the expected-sequence chain, or by someone else, has any.
const OUT_OF_ORDER_MAX: u64 = 100_000;

/// Where the relay starts: `position` (its `stream_sequence` is the stream's last sequence,
/// the base of the expected-sequence chain), and rows already in the stream beyond it.
#[derive(Debug)]
pub(super) struct Reconciled {
    pub(super) position: Position,
    /// Rows after `position` whose message the stream already holds. While any is left, the
    /// checkpoint is not written: a restart walks them again.
    pub(super) already_stored: BTreeSet<CommitPosition>,
}

impl Relay {
    /// The checkpoint, moved over every message the stream holds beyond it (forward after a
    /// crash between publishing and checkpointing), or back to the stream's last message when
    /// the stream lost messages (or to the start when it is empty).
    pub(super) async fn reconcile(&self) -> Result<Reconciled, RelayError> {
        let checkpoint = outbox::checkpoint(&self.pool, &self.stream).await?;
        let mut stream = self
            .jetstream
            .get_stream(&self.stream)
            .await
            .map_err(|e| RelayError::Stream(e.to_string()))?;
        let last_seq = stream
            .info()
            .await
            .map_err(|e| RelayError::Stream(e.to_string()))?
            .state
            .last_sequence;
        let from = if last_seq == 0 {
            if checkpoint.stream_sequence > 0 {
                tracing::warn!(stream = %self.stream, "stream is empty but was published to; re-publishing all history");
            }
            START
        } else if last_seq < checkpoint.stream_sequence {
            // The stream lost its newest messages (recreated, or restored from an older state):
            // the chain made it an outbox prefix, so its last message says where it ends.
            let found = match msg_id(&stream, last_seq).await? {
                Some(id) => self.row_of(&id).await?,
                None => None,
            };
            tracing::warn!(stream = %self.stream, last_seq, checkpoint = checkpoint.stream_sequence, "the stream is behind the checkpoint; re-publishing what it lost");
            match found {
                Some(position) => Position {
                    position,
                    stream_sequence: last_seq,
                },
                None => START,
            }
        } else {
            checkpoint
        };
        let reconciled = self.walk(&mut stream, from, last_seq).await?;
        if reconciled.position != checkpoint {
            tracing::info!(
                ?checkpoint,
                reconciled = ?reconciled.position,
                already_stored = reconciled.already_stored.len(),
                "relay checkpoint reconciled with the stream"
            );
            if reconciled.already_stored.is_empty() {
                self.save_checkpoint(reconciled.position).await?;
            }
        }
        Ok(reconciled)
    }

    /// Compares the stream's messages after `from.stream_sequence` with the outbox rows after
    /// `from`, one for one, and moves over each that matches.
    async fn walk(
        &self,
        stream: &mut Stream,
        from: Position,
        last_seq: u64,
    ) -> Result<Reconciled, RelayError> {
        let mut matched = from;
        let mut seq = from.stream_sequence + 1;
        'walk: while seq <= last_seq {
            let rows = {
                let mut conn = self.pool.acquire().await.map_err(event_store::classify)?;
                outbox::committed_after(&mut conn, matched.position, WALK_PAGE).await?
            };
            if rows.is_empty() {
                break;
            }
            for row in rows {
                if seq > last_seq {
                    break 'walk;
                }
                let expected = envelope::event_message_id(
                    &row.aggregate_type,
                    &row.aggregate_id,
                    row.sequence_u64()?,
                );
                if msg_id(stream, seq).await?.as_deref() != Some(expected.as_str()) {
                    break 'walk;
                }
                matched = Position {
                    position: row.position(),
                    stream_sequence: seq,
                };
                seq += 1;
            }
        }
        let mut already_stored = BTreeSet::new();
        if seq <= last_seq {
            let beyond = last_seq - seq + 1;
            tracing::warn!(
                stream = %self.stream,
                from_sequence = seq,
                messages = beyond,
                "the stream holds messages out of outbox order (an older relay's gap, or another publisher); publishing the missing events after them"
            );
            if beyond > OUT_OF_ORDER_MAX {
                tracing::error!(
                    limit = OUT_OF_ORDER_MAX,
                    "too many messages out of order to remember; events beyond the limit may be published twice"
                );
            }
            for out_of_order in seq..=last_seq.min(seq + OUT_OF_ORDER_MAX - 1) {
                let Some(id) = msg_id(stream, out_of_order).await? else {
                    continue;
                };
                if let Some(row) = self.row_of(&id).await?
                    && row > matched.position
                {
                    already_stored.insert(row);
                }
            }
        }
        Ok(Reconciled {
            // The chain continues from the stream's real last sequence.
            position: Position {
                stream_sequence: last_seq,
                ..matched
            },
            already_stored,
        })
    }

    /// Where the event a `Nats-Msg-Id` names lies in commit order, if it is ours.
    async fn row_of(&self, msg_id: &str) -> Result<Option<CommitPosition>, RelayError> {
        let mut parts = msg_id.rsplitn(3, ':');
        let (Some(seq), Some(id), Some(kind)) = (parts.next(), parts.next(), parts.next()) else {
            return Ok(None);
        };
        let Ok(seq) = seq.parse::<i64>() else {
            return Ok(None);
        };
        Ok(outbox::position_of(&self.pool, kind, id, seq).await?)
    }
}

/// The `Nats-Msg-Id` of the stream's message at `seq`; `None` when there is none (deleted).
async fn msg_id(stream: &Stream, seq: u64) -> Result<Option<String>, RelayError> {
    match stream.get_raw_message(seq).await {
        Ok(message) => Ok(message
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())),
        Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(error) => Err(RelayError::Stream(error.to_string())),
    }
}
