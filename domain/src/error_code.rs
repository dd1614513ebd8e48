//! The stable wire error codes of design §3, in one place.
//!
//! Every error any part of Tally reports to a client is mapped to exactly one of these. They are
//! a public contract: clients branch on them, so a code is never renamed or reused.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid JSON.
    InvalidJson,
    /// The body is JSON but does not match the command's schema (details name the field).
    SchemaViolation,
    /// No command of that name exists for that aggregate.
    UnknownCommand,
    /// The body is larger than the limit (64 KiB).
    PayloadTooLarge,
    /// No valid credentials were presented.
    Unauthenticated,
    /// The credentials do not allow this command.
    Forbidden,
    /// The aggregate does not exist.
    NotFound,
    /// The aggregate already exists.
    AlreadyExists,
    /// The aggregate is not in a state that allows the command (including an expected version
    /// that does not match).
    Conflict,
    /// The command id was already used by another sender or for another command (aggregate,
    /// name or body differ); nothing of that command is revealed. Send a new command id.
    IdempotencyMismatch,
    /// The withdrawal is larger than the balance.
    InsufficientFunds,
    /// The account is frozen and does not accept this command.
    AccountFrozen,
    /// The account is closed and accepts nothing.
    AccountClosed,
    /// The currencies of the accounts involved differ.
    CurrencyMismatch,
    /// An amount is outside 1..=10^15 minor units, or a balance would overflow.
    AmountOutOfRange,
    /// Too many commands from this sender; retry later.
    RateLimited,
    /// A dependency (PostgreSQL, JetStream) is down; safe to retry with the same command id.
    Unavailable,
    /// A bug on our side; the log has the details.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order of design §3.
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::InvalidJson,
        ErrorCode::SchemaViolation,
        ErrorCode::UnknownCommand,
        ErrorCode::PayloadTooLarge,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::Conflict,
        ErrorCode::IdempotencyMismatch,
        ErrorCode::InsufficientFunds,
        ErrorCode::AccountFrozen,
        ErrorCode::AccountClosed,
        ErrorCode::CurrencyMismatch,
        ErrorCode::AmountOutOfRange,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::SchemaViolation => "schema_violation",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Conflict => "conflict",
            ErrorCode::IdempotencyMismatch => "idempotency_mismatch",
            ErrorCode::InsufficientFunds => "insufficient_funds",
            ErrorCode::AccountFrozen => "account_frozen",
            ErrorCode::AccountClosed => "account_closed",
            ErrorCode::CurrencyMismatch => "currency_mismatch",
            ErrorCode::AmountOutOfRange => "amount_out_of_range",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_matches_serde_for_every_code() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap_or_default();
            assert_eq!(json.as_str(), Some(code.as_str()), "{code:?}");
        }
    }

    #[test]
    fn codes_are_distinct() {
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }
}
