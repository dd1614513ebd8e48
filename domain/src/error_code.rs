//! The stable wire error codes, in one place: every error any part of Tally reports to a client
//! (a command reply on NATS, a problem body of the HTTP API) carries exactly one of these.
//!
//! They are a public contract: clients branch on them, so a code is never renamed or reused.
//! `docs/errors.md` is their reference (HTTP status, NATS reply, meaning, whether a retry with
//! the same command id is safe); `domain/tests/error_codes_documented.rs` keeps it complete.

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
    /// A read's path, query or header is not one the HTTP API accepts (a malformed id, cursor,
    /// consistency token, page size or filter). HTTP API only.
    // Not in the command reply's JSON Schema: no command is answered with it.
    #[schemars(skip)]
    BadRequest,
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
    /// The read model did not reach the write a read's consistency token names within the
    /// wait, or too many reads wait already; retry the read. HTTP API only.
    // Not in the command reply's JSON Schema: no command is answered with it.
    #[schemars(skip)]
    NotYetConsistent,
    /// The movement would take an account past its overdraft limit or its maximum balance.
    LimitExceeded,
    /// The hold was already captured, voided or expired (or lapsed): it cannot be captured
    /// or voided.
    HoldEnded,
    /// Too many commands from this sender; retry later.
    RateLimited,
    /// A dependency (PostgreSQL, JetStream) is down; safe to retry with the same command id.
    Unavailable,
    /// Stored history that the domain cannot fold (tampering or a bug, never the request's
    /// fault); `tally audit verify` finds it. HTTP API only.
    // Not in the command reply's JSON Schema: no command is answered with it.
    #[schemars(skip)]
    CorruptHistory,
    /// A bug on our side; the log has the details.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order of `docs/errors.md`.
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::InvalidJson,
        ErrorCode::SchemaViolation,
        ErrorCode::UnknownCommand,
        ErrorCode::PayloadTooLarge,
        ErrorCode::BadRequest,
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
        ErrorCode::NotYetConsistent,
        ErrorCode::LimitExceeded,
        ErrorCode::HoldEnded,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::CorruptHistory,
        ErrorCode::Internal,
    ];

    /// The code as it appears on the wire (the same string serde writes).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::SchemaViolation => "schema_violation",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::BadRequest => "bad_request",
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
            ErrorCode::NotYetConsistent => "not_yet_consistent",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::HoldEnded => "hold_ended",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::CorruptHistory => "corrupt_history",
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
            let json = serde_json::to_value(code).ok();
            assert_eq!(
                json.as_ref().and_then(|j| j.as_str()),
                Some(code.as_str()),
                "{code:?}"
            );
            let back: Option<ErrorCode> = serde_json::from_value(code.as_str().into()).ok();
            assert_eq!(back, Some(code));
        }
    }

    #[test]
    fn codes_are_distinct() {
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }

    /// A tripwire rather than a check: this match stops compiling when a variant is added, to
    /// remind whoever adds it to list it in `ALL` and to document it in `docs/errors.md` (whose
    /// test then checks both).
    #[test]
    fn all_lists_every_variant() {
        for code in ErrorCode::ALL {
            match code {
                ErrorCode::InvalidJson
                | ErrorCode::SchemaViolation
                | ErrorCode::UnknownCommand
                | ErrorCode::PayloadTooLarge
                | ErrorCode::BadRequest
                | ErrorCode::Unauthenticated
                | ErrorCode::Forbidden
                | ErrorCode::NotFound
                | ErrorCode::AlreadyExists
                | ErrorCode::Conflict
                | ErrorCode::IdempotencyMismatch
                | ErrorCode::InsufficientFunds
                | ErrorCode::AccountFrozen
                | ErrorCode::AccountClosed
                | ErrorCode::CurrencyMismatch
                | ErrorCode::AmountOutOfRange
                | ErrorCode::NotYetConsistent
                | ErrorCode::LimitExceeded
                | ErrorCode::HoldEnded
                | ErrorCode::RateLimited
                | ErrorCode::Unavailable
                | ErrorCode::CorruptHistory
                | ErrorCode::Internal => {}
            }
        }
    }
}
