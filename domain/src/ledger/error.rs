//! Why a ledger decision (a transaction, a hold) is refused, each reason one stable wire code.

use serde_json::json;

use crate::account::AccountError;
use crate::error_code::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("field `{field}` {reason}")]
    InvalidField { field: String, reason: String },
    /// An account refused its part (`leg`: which leg of a transaction, when one).
    #[error("account `{account_id}`: {error}")]
    Account {
        account_id: String,
        leg: Option<usize>,
        #[source]
        error: Box<AccountError>,
    },
    #[error(
        "leg {leg}: account `{account_id}` holds {account_currency}, the leg moves {leg_currency}"
    )]
    CurrencyMismatch {
        leg: usize,
        account_id: String,
        account_currency: String,
        leg_currency: String,
    },
    /// Another owner's account refused its side of a leg; told to the sender without figures.
    #[error("leg {leg}: account `{account_id}` cannot take this amount ({code})")]
    CounterpartyRefused {
        leg: usize,
        account_id: String,
        code: ErrorCode,
    },
    #[error("the {what} id is already used")]
    AlreadyExists { what: &'static str },
    #[error("hold does not exist")]
    HoldNotFound,
    /// Another owner's hold, to a sender bound to an owner: the same answer as
    /// [`LedgerError::HoldNotFound`], told apart so it is not logged.
    #[error("hold does not exist")]
    HoldNotVisible,
    #[error("hold is {status}: it can no longer be captured or voided")]
    HoldEnded { status: &'static str },
    #[error("capture of {requested} exceeds the {held} held")]
    CaptureExceedsHold { held: i64, requested: i64 },
    #[error("hold is not due to expire: {reason}")]
    NotDue { reason: String },
}

impl LedgerError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        LedgerError::InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn account(account_id: &str, leg: Option<usize>, error: AccountError) -> Self {
        // A field error is the command's, not the account's: keep its own shape.
        if let AccountError::InvalidField { field, reason } = error {
            let field = match leg {
                Some(leg) => format!("legs[{leg}].{field}"),
                None => field.to_owned(),
            };
            return LedgerError::InvalidField { field, reason };
        }
        LedgerError::Account {
            account_id: account_id.to_owned(),
            leg,
            error: Box::new(error),
        }
    }

    /// Another owner's account to a sender bound to an owner: answered as a missing one and
    /// never logged (see [`AccountError::refuses_the_sender`]).
    pub fn refuses_the_sender(&self) -> bool {
        matches!(self, LedgerError::Account { error, .. } if error.refuses_the_sender())
            || matches!(self, LedgerError::HoldNotVisible)
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            LedgerError::InvalidField { .. } => ErrorCode::SchemaViolation,
            LedgerError::Account { error, .. } => error.code(),
            LedgerError::CurrencyMismatch { .. } => ErrorCode::CurrencyMismatch,
            LedgerError::CounterpartyRefused { code, .. } => *code,
            LedgerError::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            LedgerError::HoldNotFound | LedgerError::HoldNotVisible => ErrorCode::NotFound,
            LedgerError::HoldEnded { .. } => ErrorCode::HoldEnded,
            LedgerError::CaptureExceedsHold { .. } => ErrorCode::AmountOutOfRange,
            LedgerError::NotDue { .. } => ErrorCode::Conflict,
        }
    }

    pub fn details(&self) -> serde_json::Value {
        match self {
            LedgerError::InvalidField { field, reason } => {
                json!({"field": field, "reason": reason})
            }
            LedgerError::Account {
                account_id,
                leg,
                error,
            } => {
                // Another owner's account (`NotVisible`) gives exactly what a missing one does.
                let mut details = error.details();
                if let Some(object) = details.as_object_mut() {
                    object.insert("account_id".into(), json!(account_id));
                    if let Some(leg) = leg {
                        object.insert("leg".into(), json!(leg));
                    }
                }
                details
            }
            LedgerError::CurrencyMismatch {
                leg,
                account_id,
                account_currency,
                leg_currency,
            } => json!({
                "leg": leg, "account_id": account_id,
                "account_currency": account_currency, "leg_currency": leg_currency,
            }),
            LedgerError::HoldEnded { status } => json!({"status": status}),
            LedgerError::CounterpartyRefused {
                leg, account_id, ..
            } => json!({"leg": leg, "account_id": account_id}),
            LedgerError::CaptureExceedsHold { held, requested } => {
                json!({"held": held, "requested": requested})
            }
            LedgerError::NotDue { reason } => json!({"reason": reason}),
            LedgerError::AlreadyExists { .. }
            | LedgerError::HoldNotFound
            | LedgerError::HoldNotVisible => json!({}),
        }
    }
}
