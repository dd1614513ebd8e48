//! The reply every command gets (docs/subjects.md, "Replies"), shared by the service and its clients.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error_code::ErrorCode;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CommandReply {
    Accepted {
        command_id: Uuid,
        aggregate_id: String,
        /// The aggregate's version (its last event sequence) after the command.
        version: u64,
        /// Opaque; pass it to the query API to read your own write.
        consistency_token: String,
    },
    Rejected {
        command_id: Uuid,
        error: RejectionBody,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RejectionBody {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default)]
    pub details: serde_json::Value,
}

impl CommandReply {
    pub fn rejected(
        command_id: Uuid,
        code: ErrorCode,
        message: impl Into<String>,
        details: serde_json::Value,
    ) -> Self {
        CommandReply::Rejected {
            command_id,
            error: RejectionBody {
                code,
                message: message.into(),
                details,
            },
        }
    }

    pub fn command_id(&self) -> Uuid {
        match self {
            CommandReply::Accepted { command_id, .. }
            | CommandReply::Rejected { command_id, .. } => *command_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wire_shape_matches_design() {
        let accepted = CommandReply::Accepted {
            command_id: Uuid::nil(),
            aggregate_id: "a1".into(),
            version: 7,
            consistency_token: "t".into(),
        };
        assert_eq!(
            serde_json::to_value(&accepted).unwrap_or_default(),
            json!({"status":"accepted","command_id":Uuid::nil(),"aggregate_id":"a1","version":7,"consistency_token":"t"})
        );
        let rejected =
            CommandReply::rejected(Uuid::nil(), ErrorCode::InsufficientFunds, "no", json!({}));
        assert_eq!(
            serde_json::to_value(&rejected).unwrap_or_default(),
            json!({"status":"rejected","command_id":Uuid::nil(),"error":{"code":"insufficient_funds","message":"no","details":{}}})
        );
    }
}
