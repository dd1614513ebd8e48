//! Why the Transfer aggregate refuses a command, each reason mapped to one stable wire code.

use crate::account::AccountError;
use crate::error_code::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// A field fails the same checks as in account commands.
    #[error(transparent)]
    Invalid(#[from] AccountError),
    #[error("a transfer needs two different accounts")]
    SameAccount,
    #[error("account `{0}` does not exist")]
    AccountNotFound(String),
    #[error("account `{0}` is closed")]
    AccountClosed(String),
    #[error("currencies differ: {from} and {to}")]
    CurrencyMismatch { from: String, to: String },
    #[error("transfer already exists")]
    AlreadyExists,
    #[error("transfer does not exist")]
    NotFound,
    #[error("the accounts recorded {what} for this transfer")]
    NotRecorded { what: &'static str },
    #[error("transfer is {status}; cannot {action}")]
    WrongState {
        status: &'static str,
        action: &'static str,
    },
}

impl TransferError {
    pub fn code(&self) -> ErrorCode {
        match self {
            TransferError::Invalid(e) => e.code(),
            TransferError::SameAccount => ErrorCode::SchemaViolation,
            TransferError::AccountNotFound(_) | TransferError::NotFound => ErrorCode::NotFound,
            TransferError::AccountClosed(_) => ErrorCode::AccountClosed,
            TransferError::CurrencyMismatch { .. } => ErrorCode::CurrencyMismatch,
            TransferError::AlreadyExists => ErrorCode::AlreadyExists,
            TransferError::WrongState { .. } | TransferError::NotRecorded { .. } => {
                ErrorCode::Conflict
            }
        }
    }
}
