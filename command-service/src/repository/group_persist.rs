//! The write of a command group (`executor::group_commit`): every event of the group and every
//! command-log row, accepted and rejected, in one write, so they stand or fall together.

use cqrs_es::persist::SerializedEvent;
use domain::CommandReply;
use uuid::Uuid;

use super::TallyRepository;
use super::batch_writer::Write;

/// One command's row in the command log.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub(super) command_id: Uuid,
    pub(super) aggregate_type: String,
    pub(super) aggregate_id: String,
    pub(super) status: &'static str,
    pub(super) reply: serde_json::Value,
}

impl LogRow {
    pub fn of(reply: &CommandReply, aggregate_type: &str, aggregate_id: &str) -> LogRow {
        let status = match reply {
            CommandReply::Accepted { .. } => "accepted",
            CommandReply::Rejected { .. } => "rejected",
        };
        LogRow {
            command_id: reply.command_id(),
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            status,
            reply: serde_json::to_value(reply).unwrap_or(serde_json::Value::Null),
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
                events: events.to_vec(),
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
