//! Transfer commands. `request` comes from clients; the others are the process manager's record
//! of each step's outcome.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::account::AccountStatus;
use crate::money::AMOUNT_MAX_MINOR;
use crate::validate::{ID_LEN_MAX, ID_PATTERN, REFERENCE_LEN_MAX};

/// Move money between two accounts of the same currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestTransfer {
    /// Client-chosen id; the transfer's idempotency key.
    pub transfer_id: Uuid,
    #[schemars(length(min = 1, max = ID_LEN_MAX), pattern(ID_PATTERN))]
    pub from: String,
    #[schemars(length(min = 1, max = ID_LEN_MAX), pattern(ID_PATTERN))]
    pub to: String,
    /// Minor units, 1 to 10^15.
    #[schemars(range(min = 1, max = AMOUNT_MAX_MINOR))]
    pub amount: i64,
    #[serde(default)]
    #[schemars(length(max = REFERENCE_LEN_MAX))]
    pub reference: String,
}

/// A step of the transfer succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordStep {
    pub transfer_id: Uuid,
}

/// A step failed: the transfer ends as failed, after the refund when money had been taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailTransfer {
    pub transfer_id: Uuid,
    pub code: String,
    pub reason: String,
    /// The source account was refunded (required when the debit had been recorded).
    #[serde(default)]
    pub refunded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferCommand {
    Request(RequestTransfer),
    RecordDebit(RecordStep),
    RecordCredit(RecordStep),
    Fail(FailTransfer),
}

impl TransferCommand {
    pub fn transfer_id(&self) -> Uuid {
        match self {
            TransferCommand::Request(c) => c.transfer_id,
            TransferCommand::RecordDebit(c) | TransferCommand::RecordCredit(c) => c.transfer_id,
            TransferCommand::Fail(c) => c.transfer_id,
        }
    }
}

/// What the command-service looked up about the two accounts when a transfer is requested
/// (the domain does no IO; these arrive as data).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferFacts {
    pub from: Option<AccountFacts>,
    pub to: Option<AccountFacts>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountFacts {
    pub currency: String,
    pub status: AccountStatus,
}
