//! Why the Account aggregate refuses a command, each reason mapped to one stable wire code.

use serde_json::json;

use crate::error_code::ErrorCode;
use crate::money::{AMOUNT_MAX_MINOR, MoneyError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("field `{field}` {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("amount {amount} is outside 1..={AMOUNT_MAX_MINOR} minor units")]
    AmountOutOfRange { amount: i64 },
    #[error("balance {balance} plus {amount} exceeds the largest balance an account can hold")]
    BalanceOverflow { balance: i64, amount: i64 },
    #[error("account does not exist")]
    NotFound,
    /// Another owner's account, to a sender bound to an owner: the same wire answer as
    /// [`AccountError::NotFound`] (code, message, details), so existence does not leak, but
    /// told apart so the command-service does not log it as an answer for that account.
    #[error("account does not exist")]
    NotVisible,
    #[error("account already exists")]
    AlreadyExists,
    #[error("balance {balance} is less than the {requested} requested")]
    InsufficientFunds { balance: i64, requested: i64 },
    #[error("account is frozen")]
    Frozen,
    #[error("account is closed")]
    Closed,
    #[error("account is already frozen")]
    AlreadyFrozen,
    #[error("account is not frozen")]
    NotFrozen,
    #[error("account can only be closed at a zero balance; balance is {balance}")]
    BalanceNotZero { balance: i64 },
    #[error("{count} transfers from this account are still in flight")]
    TransfersInFlight { count: usize },
    #[error("transfer does not exist")]
    TransferNotFound,
    #[error(
        "{what} of {amount} would pass the account's {limit} of {limit_value} (balance {balance}, held {held})"
    )]
    LimitExceeded {
        account_id: String,
        /// `overdraft_limit`, `max_balance` or `open_holds`.
        limit: &'static str,
        limit_value: i64,
        what: &'static str,
        amount: i64,
        balance: i64,
        held: i64,
    },
    #[error("{count} holds on this account are still open")]
    HoldsOpen { count: usize },
    #[error("transfer does not call for this step: {reason}")]
    StepNotDue { reason: String },
}

/// Money's refusals are the account's own, with the same fields (and so the same message,
/// code and details).
impl From<MoneyError> for AccountError {
    fn from(error: MoneyError) -> Self {
        match error {
            MoneyError::AmountOutOfRange { amount } => AccountError::AmountOutOfRange { amount },
            MoneyError::BalanceOverflow { balance, amount } => {
                AccountError::BalanceOverflow { balance, amount }
            }
            MoneyError::InsufficientFunds { balance, requested } => {
                AccountError::InsufficientFunds { balance, requested }
            }
        }
    }
}

impl AccountError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        AccountError::InvalidField {
            field,
            reason: reason.into(),
        }
    }

    /// A refusal of the sender (another owner's account) rather than of the command: it is
    /// not recorded, since it says nothing about the account and a row would let a token
    /// probe other owners' ids into the log.
    pub fn refuses_the_sender(&self) -> bool {
        matches!(self, AccountError::NotVisible)
    }

    /// The stable wire code (docs/errors.md) for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            AccountError::InvalidField { .. } => ErrorCode::SchemaViolation,
            AccountError::AmountOutOfRange { .. } | AccountError::BalanceOverflow { .. } => {
                ErrorCode::AmountOutOfRange
            }
            AccountError::NotFound | AccountError::NotVisible => ErrorCode::NotFound,
            AccountError::AlreadyExists => ErrorCode::AlreadyExists,
            AccountError::InsufficientFunds { .. } => ErrorCode::InsufficientFunds,
            AccountError::LimitExceeded { .. } => ErrorCode::LimitExceeded,
            AccountError::Frozen => ErrorCode::AccountFrozen,
            AccountError::Closed => ErrorCode::AccountClosed,
            AccountError::TransferNotFound => ErrorCode::NotFound,
            AccountError::AlreadyFrozen
            | AccountError::NotFrozen
            | AccountError::BalanceNotZero { .. }
            | AccountError::TransfersInFlight { .. }
            | AccountError::HoldsOpen { .. }
            | AccountError::StepNotDue { .. } => ErrorCode::Conflict,
        }
    }

    /// Machine-readable details for the reply's `error.details`.
    pub fn details(&self) -> serde_json::Value {
        match self {
            AccountError::InvalidField { field, reason } => {
                json!({ "field": field, "reason": reason })
            }
            AccountError::AmountOutOfRange { amount } => {
                json!({ "amount": amount, "min": 1, "max": AMOUNT_MAX_MINOR })
            }
            AccountError::BalanceOverflow { balance, amount } => {
                json!({ "balance": balance, "amount": amount })
            }
            AccountError::InsufficientFunds { balance, requested } => {
                json!({ "balance": balance, "requested": requested })
            }
            AccountError::BalanceNotZero { balance } => json!({ "balance": balance }),
            AccountError::TransfersInFlight { count } => json!({ "transfers_in_flight": count }),
            AccountError::HoldsOpen { count } => json!({ "holds_open": count }),
            AccountError::LimitExceeded {
                account_id,
                limit,
                limit_value,
                what,
                amount,
                balance,
                held,
            } => json!({
                "account_id": account_id,
                "limit": limit, "limit_value": limit_value, "operation": what,
                "amount": amount, "balance": balance, "held": held,
            }),
            AccountError::StepNotDue { reason } => json!({ "reason": reason }),
            AccountError::NotFound
            | AccountError::NotVisible
            | AccountError::AlreadyExists
            | AccountError::Frozen
            | AccountError::Closed
            | AccountError::AlreadyFrozen
            | AccountError::NotFrozen
            | AccountError::TransferNotFound => json!({}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Money's refusals reach the client exactly as before money had its own error type.
    #[test]
    fn money_refusals_keep_their_message_code_and_details() {
        let cases = [
            (
                MoneyError::AmountOutOfRange { amount: 0 },
                ErrorCode::AmountOutOfRange,
            ),
            (
                MoneyError::BalanceOverflow {
                    balance: i64::MAX,
                    amount: 1,
                },
                ErrorCode::AmountOutOfRange,
            ),
            (
                MoneyError::InsufficientFunds {
                    balance: 9,
                    requested: 10,
                },
                ErrorCode::InsufficientFunds,
            ),
        ];
        for (money, code) in cases {
            let account = AccountError::from(money.clone());
            assert_eq!(account.to_string(), money.to_string());
            assert_eq!(account.code(), code);
            assert_ne!(account.details(), json!({}), "{account:?}");
        }
    }
}
