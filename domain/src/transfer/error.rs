//! Why the Transfer aggregate refuses a command, each reason mapped to one stable wire code.

use crate::account::AccountError;
use crate::error_code::ErrorCode;
use crate::money::MoneyError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// A field fails the same checks as in account commands.
    #[error(transparent)]
    Invalid(#[from] AccountError),
    #[error("a transfer needs two different accounts")]
    SameAccount,
    #[error("account `{0}` does not exist")]
    AccountNotFound(String),
    /// The source is another owner's, to a requester bound to an owner: answered exactly as
    /// [`TransferError::AccountNotFound`], but told apart so it is not logged.
    #[error("account `{0}` does not exist")]
    SourceNotVisible(String),
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

/// An amount refused by money's rules, as the account commands refuse it.
impl From<MoneyError> for TransferError {
    fn from(error: MoneyError) -> Self {
        TransferError::Invalid(AccountError::from(error))
    }
}

impl TransferError {
    /// A refusal of the requester (another owner's source) rather than of the request: not
    /// recorded, like [`AccountError::refuses_the_sender`].
    pub fn refuses_the_sender(&self) -> bool {
        match self {
            TransferError::Invalid(e) => e.refuses_the_sender(),
            TransferError::SourceNotVisible(_) => true,
            _ => false,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            TransferError::Invalid(e) => e.code(),
            TransferError::SameAccount => ErrorCode::SchemaViolation,
            TransferError::AccountNotFound(_)
            | TransferError::SourceNotVisible(_)
            | TransferError::NotFound => ErrorCode::NotFound,
            TransferError::AccountClosed(_) => ErrorCode::AccountClosed,
            TransferError::CurrencyMismatch { .. } => ErrorCode::CurrencyMismatch,
            TransferError::AlreadyExists => ErrorCode::AlreadyExists,
            TransferError::WrongState { .. } | TransferError::NotRecorded { .. } => {
                ErrorCode::Conflict
            }
        }
    }
}
