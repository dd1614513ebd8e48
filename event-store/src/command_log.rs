//! The command log: one row per command id, its first reply, and what it is bound to (the
//! sender and a fingerprint of the command), so a retry gets the first reply and any other
//! use of the id gets `idempotency_mismatch` (see command-service's `idempotency`).

use domain::{CommandReply, ErrorCode};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::StoreError;

/// What a command-log row is bound to: the sender and the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogKey {
    /// The token subject; `None` only on a row refused before its sender was known.
    pub actor: Option<String>,
    /// `sha256` of the canonical command; empty on a row refused before its body was read,
    /// which is then bound to no command at all.
    pub fingerprint: Vec<u8>,
}

impl LogKey {
    /// The key of a durable command refused before it was read (no sender, no command known):
    /// nothing is a retry of it, so every later use of its id is a mismatch and none is told
    /// what the refusal was.
    pub fn unread() -> LogKey {
        LogKey {
            actor: None,
            fingerprint: Vec::new(),
        }
    }

    /// What a logged row answers to a command with this key under the same id.
    pub fn answer(&self, logged: LoggedCommand) -> CommandReply {
        let Some(fingerprint) = logged.fingerprint else {
            // Logged before ids were bound (migration 0008): answered as it always was.
            return logged.reply.0;
        };
        let retry = !fingerprint.is_empty()
            && fingerprint == self.fingerprint
            && logged.actor.is_some()
            && logged.actor == self.actor;
        if retry {
            logged.reply.0
        } else {
            mismatch(logged.reply.command_id())
        }
    }

    /// Whether a command with `other`'s key under this key's id is a retry (two commands of
    /// one decision are compared this way).
    pub fn retried_by(&self, other: &LogKey) -> bool {
        !self.fingerprint.is_empty() && self.actor.is_some() && self == other
    }
}

/// The refusal of an id's reuse: the same words whatever differs, nothing of the first command.
pub fn mismatch(command_id: Uuid) -> CommandReply {
    CommandReply::rejected(
        command_id,
        ErrorCode::IdempotencyMismatch,
        "this command id was already used for another command or by another sender; \
         send this command with a new command id",
        serde_json::json!({}),
    )
}

/// A command-log row as read: the first reply and the key it was logged with (`None` on rows
/// logged before keys existed).
#[derive(Debug, Clone)]
pub struct LoggedCommand {
    pub reply: sqlx::types::Json<CommandReply>,
    pub actor: Option<String>,
    pub fingerprint: Option<Vec<u8>>,
}

/// One command's row in the command log, as written.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub(crate) command_id: Uuid,
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) status: &'static str,
    /// The reply as JSON text: serialised once, not built as a `Value` tree and copied.
    pub(crate) reply: Box<RawValue>,
    pub(crate) key: LogKey,
}

impl LogRow {
    pub fn of(
        reply: &CommandReply,
        key: &LogKey,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<LogRow, StoreError> {
        let status = match reply {
            CommandReply::Accepted { .. } => "accepted",
            CommandReply::Rejected { .. } => "rejected",
        };
        Ok(LogRow {
            command_id: reply.command_id(),
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            status,
            reply: serde_json::value::to_raw_value(reply)
                .map_err(|e| StoreError::internal("serialising a reply", e))?,
            key: key.clone(),
        })
    }
}

/// A command's recorded result, as `GET /v1/commands/{id}` serves it.
#[derive(Debug, Clone)]
pub struct CommandRecord {
    pub command_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// `accepted` or `rejected`.
    pub status: String,
    pub reply: serde_json::Value,
    pub recorded_at: chrono::DateTime<chrono::Utc>,
}

/// The recorded result of `command_id`, if it was used.
pub async fn record(
    pool: &sqlx::PgPool,
    command_id: Uuid,
) -> Result<Option<CommandRecord>, StoreError> {
    Ok(sqlx::query_as!(
        CommandRecord,
        "SELECT command_id, aggregate_type, aggregate_id, status, reply, recorded_at
         FROM command_log WHERE command_id = $1",
        command_id
    )
    .fetch_optional(pool)
    .await?)
}
