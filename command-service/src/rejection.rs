//! A refusal on its way to the client: stable code, message, details.

use domain::transfer::TransferError;
use domain::{AccountError, CommandReply, ErrorCode};
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
    pub details: serde_json::Value,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
            details: json!({}),
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    pub fn into_reply(self, command_id: Uuid) -> CommandReply {
        CommandReply::rejected(command_id, self.code, self.message, self.details)
    }

    pub fn unavailable(what: &str) -> Self {
        Rejection::new(
            ErrorCode::Unavailable,
            format!("{what} is unavailable; retry with the same command id"),
        )
    }

    pub fn internal() -> Self {
        Rejection::new(
            ErrorCode::Internal,
            "internal error; the service log has the details",
        )
    }
}

impl From<&AccountError> for Rejection {
    fn from(error: &AccountError) -> Self {
        Rejection {
            code: error.code(),
            message: error.to_string(),
            details: error.details(),
        }
    }
}

impl From<&domain::ledger::LedgerError> for Rejection {
    fn from(error: &domain::ledger::LedgerError) -> Self {
        Rejection {
            code: error.code(),
            message: error.to_string(),
            details: error.details(),
        }
    }
}

impl From<&TransferError> for Rejection {
    fn from(error: &TransferError) -> Self {
        match error {
            TransferError::Invalid(inner) => Rejection::from(inner),
            other => Rejection::new(other.code(), other.to_string()),
        }
    }
}
