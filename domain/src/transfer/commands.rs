//! Transfer commands. `request` comes from clients; the others are the process manager's record
//! of each step's outcome.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::account::{Account, AccountStatus, DecodeError};
use crate::money::AMOUNT_MAX_MINOR;
use crate::validate::{ID_LEN_MAX, ID_PATTERN, REASON_LEN_MAX, REFERENCE_LEN_MAX};

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

/// An account refused a step: before the debit the transfer fails at once; after it, the
/// transfer waits for the refund of the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailTransfer {
    pub transfer_id: Uuid,
    /// The error code the account refused with.
    #[schemars(length(min = 1, max = REASON_LEN_MAX))]
    pub code: String,
    #[schemars(length(min = 1, max = REASON_LEN_MAX))]
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferCommand {
    Request(RequestTransfer),
    RecordDebit(RecordStep),
    RecordCredit(RecordStep),
    Complete(RecordStep),
    Fail(FailTransfer),
    RecordRefund(RecordStep),
}

/// Command names as they appear in subjects (`tally.cmd.transfer.<name>`). Only `request` is
/// for clients; the rest are the process manager's.
pub const TRANSFER_COMMAND_NAMES: [&str; 6] = [
    "request",
    "record_debit",
    "record_credit",
    "complete",
    "fail",
    "record_refund",
];

impl TransferCommand {
    pub fn transfer_id(&self) -> Uuid {
        match self {
            TransferCommand::Request(c) => c.transfer_id,
            TransferCommand::RecordDebit(c)
            | TransferCommand::RecordCredit(c)
            | TransferCommand::Complete(c)
            | TransferCommand::RecordRefund(c) => c.transfer_id,
            TransferCommand::Fail(c) => c.transfer_id,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            TransferCommand::Request(_) => "request",
            TransferCommand::RecordDebit(_) => "record_debit",
            TransferCommand::RecordCredit(_) => "record_credit",
            TransferCommand::Complete(_) => "complete",
            TransferCommand::Fail(_) => "fail",
            TransferCommand::RecordRefund(_) => "record_refund",
        }
    }

    /// Builds a command from its subject name and an already schema-checked JSON body.
    pub fn from_json(name: &str, body: serde_json::Value) -> Result<Self, DecodeError> {
        fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, DecodeError> {
            serde_json::from_value(v).map_err(DecodeError::Body)
        }
        Ok(match name {
            "request" => TransferCommand::Request(parse(body)?),
            "record_debit" => TransferCommand::RecordDebit(parse(body)?),
            "record_credit" => TransferCommand::RecordCredit(parse(body)?),
            "complete" => TransferCommand::Complete(parse(body)?),
            "fail" => TransferCommand::Fail(parse(body)?),
            "record_refund" => TransferCommand::RecordRefund(parse(body)?),
            other => return Err(DecodeError::UnknownCommand(other.to_owned())),
        })
    }

    /// The body as a client would send it.
    pub fn to_json(&self) -> serde_json::Value {
        let value = match self {
            TransferCommand::Request(c) => serde_json::to_value(c),
            TransferCommand::RecordDebit(c)
            | TransferCommand::RecordCredit(c)
            | TransferCommand::Complete(c)
            | TransferCommand::RecordRefund(c) => serde_json::to_value(c),
            TransferCommand::Fail(c) => serde_json::to_value(c),
        };
        // Plain structs of strings and integers always serialize.
        value.unwrap_or(serde_json::Value::Null)
    }
}

/// What the command-service looked up before a transfer command (the domain does no IO; these
/// arrive as data): the two accounts when a transfer is requested, and what the accounts
/// recorded of this transfer when a step's outcome is recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferFacts {
    pub from: Option<AccountFacts>,
    pub to: Option<AccountFacts>,
    pub recorded: StepsRecorded,
    /// The requester's `owner` claim (`None`: any owner): a request needs its source to be
    /// that owner's, judged on the same facts the request is decided on, since an id free
    /// at an earlier look may since have been opened for someone else.
    pub owner: Option<String>,
}

/// The transfer's steps as the accounts recorded them (their `Transfer*` events): the
/// transfer records a step's outcome only when the account agrees, so the two never diverge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepsRecorded {
    /// The source has a `TransferDebited`.
    pub debited: bool,
    /// The destination has a `TransferCredited`.
    pub credited: bool,
    /// The source has a `TransferRefunded`.
    pub refunded: bool,
    /// The source has a `TransferSettled`.
    pub settled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountFacts {
    pub currency: String,
    pub status: AccountStatus,
    pub owner: String,
}

impl AccountFacts {
    /// What a request needs of `account`; `None` for an id nobody opened.
    pub fn of(account: &Account) -> Option<AccountFacts> {
        (account.status != AccountStatus::Unopened).then(|| AccountFacts {
            currency: account.currency.clone(),
            status: account.status,
            owner: account.owner.clone(),
        })
    }
}
