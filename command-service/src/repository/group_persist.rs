//! The write of a command group (`executor::group_commit`) or of a command on several aggregates
//! (a transfer settled at once): every event and every command-log row in one write, so they
//! stand or fall together.

use cqrs_es::persist::SerializedEvent;
use domain::CommandReply;
use uuid::Uuid;

use super::TallyRepository;
use super::batch_writer::{EventRow, Write};
use super::idempotency::LogKey;

/// One command's row in the command log.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub(super) command_id: Uuid,
    pub(super) aggregate_type: String,
    pub(super) aggregate_id: String,
    pub(super) status: &'static str,
    /// The reply as JSON text: serialised once, not built as a `Value` tree and copied.
    pub(super) reply: Box<serde_json::value::RawValue>,
    /// Who sent the command and what it was: a later use of the id is answered from this row
    /// only if both match (`idempotency`).
    pub(super) key: LogKey,
}

impl LogRow {
    pub fn of(
        reply: &CommandReply,
        key: &LogKey,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> LogRow {
        let status = match reply {
            CommandReply::Accepted { .. } => "accepted",
            CommandReply::Rejected { .. } => "rejected",
        };
        LogRow {
            command_id: reply.command_id(),
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            status,
            // A reply is plain data, so serialising it cannot fail; the default is `null`.
            reply: serde_json::value::to_raw_value(reply).unwrap_or_default(),
            key: key.clone(),
        }
    }
}

impl TallyRepository {
    /// Writes `events` (consecutive, of one aggregate) and `log`. A taken sequence or command
    /// id fails the whole statement and writes nothing.
    pub async fn persist_group(
        &self,
        events: &[SerializedEvent],
        log: &[LogRow],
    ) -> Result<(), sqlx::Error> {
        let hashes = self
            .chain_hashes(events)
            .await
            .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        self.writer
            .write(Write {
                events: EventRow::all(events)?,
                hashes: hashes.clone(),
                log: log.to_vec(),
            })
            .await?;
        if let Some(last) = events.last() {
            self.remember_head(last, &hashes);
        }
        Ok(())
    }
}

impl TallyRepository {
    /// Writes the events of several aggregates (each slice consecutive events of one aggregate)
    /// and `log` in one statement: a taken sequence of any of them or a taken command id fails
    /// the whole of it.
    pub async fn persist_aggregates(
        &self,
        aggregates: &[&[SerializedEvent]],
        log: &[LogRow],
    ) -> Result<(), sqlx::Error> {
        let mut events = Vec::new();
        let mut hashes = Vec::new();
        for part in aggregates {
            let part_hashes = self
                .chain_hashes(part)
                .await
                .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
            events.extend(EventRow::all(part)?);
            hashes.extend(part_hashes);
        }
        self.writer
            .write(Write {
                events,
                hashes: hashes.clone(),
                log: log.to_vec(),
            })
            .await?;
        let mut offset = 0;
        for part in aggregates {
            let end = offset + part.len();
            if let (Some(last), Some(part_hashes)) = (part.last(), hashes.get(offset..end)) {
                self.remember_head(last, part_hashes);
            }
            offset = end;
        }
        Ok(())
    }
}
