//! What an audit can find wrong, each naming the aggregate and, where there is one, the event.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// The stored hash is not `sha256(previous stored hash || canonical bytes)`: this row's
    /// content or hash was changed after it was written.
    BrokenLink {
        aggregate_type: String,
        aggregate_id: String,
        sequence: i64,
        expected: String,
        found: String,
    },
    /// The row has no hash (written before the chain existed, or the hash was removed).
    Unchained {
        aggregate_type: String,
        aggregate_id: String,
        sequence: i64,
    },
    /// Sequences must run 1, 2, 3…: an event row is missing.
    SequenceGap {
        aggregate_type: String,
        aggregate_id: String,
        expected: i64,
        found: i64,
    },
    /// The payload is not a valid event of its type and version.
    Unreadable {
        aggregate_type: String,
        aggregate_id: String,
        sequence: i64,
        error: String,
    },
    /// The event is well formed but breaks a domain rule (a stated balance that does not follow
    /// from the amounts, a movement on an account that is not open…).
    Inconsistent {
        aggregate_type: String,
        aggregate_id: String,
        sequence: i64,
        reason: String,
    },
    /// The read model disagrees with the state re-derived from the events.
    ReadModelMismatch {
        aggregate_type: String,
        aggregate_id: String,
        field: String,
        derived: String,
        read_model: String,
    },
    /// A transfer's movements do not add up across its accounts (money credited that was never
    /// debited, credited and refunded, a different amount or account than requested…).
    TransferImbalance { transfer_id: String, reason: String },
    /// A currency does not sum to zero over all accounts, system ones included: money was
    /// made or lost (one side of a movement recorded without the other).
    CurrencyImbalance { currency: String, sum: i128 },
    /// A transaction's legs (or a captured hold's posting) and the `LegsPosted` events on its
    /// accounts disagree: a leg missing, added, changed or recorded twice.
    TransactionImbalance {
        transaction_id: String,
        reason: String,
    },
    /// A hold and its account disagree: reserved or released other than once, on another
    /// account, for another amount, or not in step with how the hold ended.
    HoldMismatch { hold_id: String, reason: String },
    /// The digest's signature does not hold, or is not by the expected key.
    DigestSignature { reason: String },
    /// The digest's root or count is not what the store holds up to the digest's point.
    DigestMismatch {
        field: String,
        digest: String,
        store: String,
    },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::BrokenLink {
                aggregate_type,
                aggregate_id,
                sequence,
                expected,
                found,
            } => write!(
                f,
                "{aggregate_type} {aggregate_id} event {sequence}: broken hash link (expected {expected}, found {found})"
            ),
            Finding::Unchained {
                aggregate_type,
                aggregate_id,
                sequence,
            } => write!(
                f,
                "{aggregate_type} {aggregate_id} event {sequence}: no hash"
            ),
            Finding::SequenceGap {
                aggregate_type,
                aggregate_id,
                expected,
                found,
            } => write!(
                f,
                "{aggregate_type} {aggregate_id} event {expected}: missing (next stored event is {found})"
            ),
            Finding::Unreadable {
                aggregate_type,
                aggregate_id,
                sequence,
                error,
            } => write!(
                f,
                "{aggregate_type} {aggregate_id} event {sequence}: unreadable payload: {error}"
            ),
            Finding::Inconsistent {
                aggregate_type,
                aggregate_id,
                sequence,
                reason,
            } => write!(
                f,
                "{aggregate_type} {aggregate_id} event {sequence}: {reason}"
            ),
            Finding::ReadModelMismatch {
                aggregate_type,
                aggregate_id,
                field,
                derived,
                read_model,
            } => write!(
                f,
                "{aggregate_type} {aggregate_id}: read model {field} is {read_model}, events say {derived}"
            ),
            Finding::TransferImbalance {
                transfer_id,
                reason,
            } => write!(f, "transfer {transfer_id}: {reason}"),
            Finding::CurrencyImbalance { currency, sum } => write!(
                f,
                "currency {currency} sums to {sum} over all accounts, not 0"
            ),
            Finding::TransactionImbalance {
                transaction_id,
                reason,
            } => write!(f, "transaction {transaction_id}: {reason}"),
            Finding::HoldMismatch { hold_id, reason } => write!(f, "hold {hold_id}: {reason}"),
            Finding::DigestSignature { reason } => write!(f, "digest signature: {reason}"),
            Finding::DigestMismatch {
                field,
                digest,
                store,
            } => write!(f, "digest {field} is {digest}, the store gives {store}"),
        }
    }
}
