//! The write of a command group (`executor::group_commit`): every event of the group and every
//! command-log row, accepted and rejected, in one statement, so they stand or fall together.

use cqrs_es::persist::SerializedEvent;
use domain::CommandReply;
use uuid::Uuid;

use super::TallyRepository;

/// One command's row in the command log.
#[derive(Debug, Clone)]
pub struct LogRow {
    command_id: Uuid,
    aggregate_type: String,
    aggregate_id: String,
    status: &'static str,
    reply: serde_json::Value,
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
        let to_i64 = |n: usize| i64::try_from(n).map_err(|e| sqlx::Error::Encode(Box::new(e)));
        let sequences = events
            .iter()
            .map(|e| to_i64(e.sequence))
            .collect::<Result<Vec<_>, _>>()?;
        sqlx::query(
            "WITH logged AS (
                 INSERT INTO command_log (command_id, aggregate_type, aggregate_id, status, reply)
                 SELECT * FROM UNNEST($9::uuid[], $10::text[], $11::text[], $12::text[], $13::jsonb[])
             )
             INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, hash)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[], $8::bytea[])",
        )
        .bind(events.iter().map(|e| e.aggregate_type.clone()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.aggregate_id.clone()).collect::<Vec<_>>())
        .bind(&sequences)
        .bind(events.iter().map(|e| e.event_type.clone()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event_version.clone()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.payload.clone()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.metadata.clone()).collect::<Vec<_>>())
        .bind(&hashes)
        .bind(log.iter().map(|r| r.command_id).collect::<Vec<_>>())
        .bind(log.iter().map(|r| r.aggregate_type.clone()).collect::<Vec<_>>())
        .bind(log.iter().map(|r| r.aggregate_id.clone()).collect::<Vec<_>>())
        .bind(log.iter().map(|r| r.status).collect::<Vec<_>>())
        .bind(log.iter().map(|r| r.reply.clone()).collect::<Vec<_>>())
        .execute(self.pool())
        .await?;
        if let Some(last) = events.last() {
            self.remember_head(last, &hashes);
        }
        Ok(())
    }
}
