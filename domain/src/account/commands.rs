//! Account commands as clients send them: one body type per NATS subject
//! `tally.cmd.account.<name>`. These types generate `schemas/commands/account.<name>.json`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::events::DepositChannel;
use crate::money::AMOUNT_MAX_MINOR;
use crate::validate::{
    CURRENCY_PATTERN, ID_LEN_MAX, ID_PATTERN, OWNER_LEN_MAX, REASON_LEN_MAX, REFERENCE_LEN_MAX,
};

/// Open a new account. Fails with `already_exists` if the id is taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAccount {
    /// Client-chosen account id; becomes a NATS subject token.
    #[schemars(length(min = 1, max = ID_LEN_MAX), pattern(ID_PATTERN))]
    pub account_id: String,
    /// Who owns the account (a customer id, a name).
    #[schemars(length(min = 1, max = OWNER_LEN_MAX))]
    pub owner: String,
    /// ISO 4217 currency code; fixed for the account's life.
    #[schemars(pattern(CURRENCY_PATTERN))]
    pub currency: String,
    /// At most 16 entries; keys of `A-Z a-z 0-9 _ - .` up to 64, values up to 256 characters.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = crate::validate::METADATA_ENTRIES_MAX))]
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// Add money to an account. Frozen accounts accept deposits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Deposit {
    #[schemars(length(min = 1, max = ID_LEN_MAX), pattern(ID_PATTERN))]
    pub account_id: String,
    /// Minor units (cents), 1 to 10^15.
    #[schemars(range(min = 1, max = AMOUNT_MAX_MINOR))]
    pub amount: i64,
    /// The client's reference for this movement (invoice number, note).
    #[serde(default)]
    #[schemars(length(max = REFERENCE_LEN_MAX))]
    pub reference: String,
    /// How the money arrived; `unspecified` when absent.
    #[serde(default)]
    pub channel: DepositChannel,
}

/// Take money out of an account. Refused when frozen or when the balance is too small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Withdraw {
    #[schemars(length(min = 1, max = ID_LEN_MAX), pattern(ID_PATTERN))]
    pub account_id: String,
    /// Minor units (cents), 1 to 10^15.
    #[schemars(range(min = 1, max = AMOUNT_MAX_MINOR))]
    pub amount: i64,
    #[serde(default)]
    #[schemars(length(max = REFERENCE_LEN_MAX))]
    pub reference: String,
}

/// Stop withdrawals (deposits still land) until the account is unfrozen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Freeze {
    #[schemars(length(min = 1, max = ID_LEN_MAX), pattern(ID_PATTERN))]
    pub account_id: String,
    /// Why; recorded in the audit trail.
    #[schemars(length(min = 1, max = REASON_LEN_MAX))]
    pub reason: String,
}

/// Lift a freeze.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Unfreeze {
    #[schemars(length(min = 1, max = ID_LEN_MAX), pattern(ID_PATTERN))]
    pub account_id: String,
}

/// Close an account for good. Only at a zero balance; a closed account accepts nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Close {
    #[schemars(length(min = 1, max = ID_LEN_MAX), pattern(ID_PATTERN))]
    pub account_id: String,
}

/// Set the account's limits (scope `admin`; who and why are recorded). Refused when the
/// account's balance is already outside them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLimits {
    #[schemars(length(min = 1, max = ID_LEN_MAX), pattern(ID_PATTERN))]
    pub account_id: String,
    /// How far below zero the available balance may go, in minor units (0: not at all).
    #[schemars(range(min = 0, max = AMOUNT_MAX_MINOR))]
    pub overdraft_limit: i64,
    /// The highest posted balance the account may reach, in minor units; none when absent.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_balance: Option<i64>,
    /// Why; recorded in the audit trail.
    #[schemars(length(min = 1, max = REASON_LEN_MAX))]
    pub reason: String,
}

/// One step of a transfer on this account, sent by the process manager (`debit`, `credit`,
/// `refund`, `settle`). The amount and the other account are the transfer's own, never the
/// sender's: a step the transfer's state does not call for is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferStep {
    #[schemars(length(min = 1, max = ID_LEN_MAX), pattern(ID_PATTERN))]
    pub account_id: String,
    pub transfer_id: Uuid,
}

/// Every command the Account aggregate handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountCommand {
    Open(OpenAccount),
    Deposit(Deposit),
    Withdraw(Withdraw),
    Freeze(Freeze),
    Unfreeze(Unfreeze),
    Close(Close),
    SetLimits(SetLimits),
    /// Takes the transfer's amount from its source account and holds it as in flight.
    Debit(TransferStep),
    /// Gives the transfer's amount to its destination account.
    Credit(TransferStep),
    /// Gives a debited amount back to the source after the credit was refused.
    Refund(TransferStep),
    /// Releases the source's hold once the destination has been credited.
    Settle(TransferStep),
}

/// Command names as they appear in subjects (`tally.cmd.account.<name>`).
pub const ACCOUNT_COMMAND_NAMES: [&str; 11] = [
    "open",
    "deposit",
    "withdraw",
    "freeze",
    "unfreeze",
    "close",
    "set_limits",
    "debit",
    "credit",
    "refund",
    "settle",
];

/// Why a body could not become a command.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown command `{0}`")]
    UnknownCommand(String),
    #[error("body does not match the command: {0}")]
    Body(#[source] serde_json::Error),
}

impl AccountCommand {
    pub fn name(&self) -> &'static str {
        match self {
            AccountCommand::Open(_) => "open",
            AccountCommand::Deposit(_) => "deposit",
            AccountCommand::Withdraw(_) => "withdraw",
            AccountCommand::Freeze(_) => "freeze",
            AccountCommand::Unfreeze(_) => "unfreeze",
            AccountCommand::Close(_) => "close",
            AccountCommand::SetLimits(_) => "set_limits",
            AccountCommand::Debit(_) => "debit",
            AccountCommand::Credit(_) => "credit",
            AccountCommand::Refund(_) => "refund",
            AccountCommand::Settle(_) => "settle",
        }
    }

    /// The transfer a step command belongs to.
    pub fn transfer_id(&self) -> Option<Uuid> {
        match self {
            AccountCommand::Debit(c)
            | AccountCommand::Credit(c)
            | AccountCommand::Refund(c)
            | AccountCommand::Settle(c) => Some(c.transfer_id),
            _ => None,
        }
    }

    /// The id of the account the command targets.
    pub fn account_id(&self) -> &str {
        match self {
            AccountCommand::Open(c) => &c.account_id,
            AccountCommand::Deposit(c) => &c.account_id,
            AccountCommand::Withdraw(c) => &c.account_id,
            AccountCommand::Freeze(c) => &c.account_id,
            AccountCommand::Unfreeze(c) => &c.account_id,
            AccountCommand::Close(c) => &c.account_id,
            AccountCommand::SetLimits(c) => &c.account_id,
            AccountCommand::Debit(c)
            | AccountCommand::Credit(c)
            | AccountCommand::Refund(c)
            | AccountCommand::Settle(c) => &c.account_id,
        }
    }

    /// Builds a command from its subject name and an already schema-checked JSON body.
    pub fn from_json(name: &str, body: serde_json::Value) -> Result<Self, DecodeError> {
        fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, DecodeError> {
            serde_json::from_value(v).map_err(DecodeError::Body)
        }
        Ok(match name {
            "open" => AccountCommand::Open(parse(body)?),
            "deposit" => AccountCommand::Deposit(parse(body)?),
            "withdraw" => AccountCommand::Withdraw(parse(body)?),
            "freeze" => AccountCommand::Freeze(parse(body)?),
            "unfreeze" => AccountCommand::Unfreeze(parse(body)?),
            "close" => AccountCommand::Close(parse(body)?),
            "set_limits" => AccountCommand::SetLimits(parse(body)?),
            "debit" => AccountCommand::Debit(parse(body)?),
            "credit" => AccountCommand::Credit(parse(body)?),
            "refund" => AccountCommand::Refund(parse(body)?),
            "settle" => AccountCommand::Settle(parse(body)?),
            other => return Err(DecodeError::UnknownCommand(other.to_owned())),
        })
    }

    /// The body as a client would send it.
    pub fn to_json(&self) -> serde_json::Value {
        let value = match self {
            AccountCommand::Open(c) => serde_json::to_value(c),
            AccountCommand::Deposit(c) => serde_json::to_value(c),
            AccountCommand::Withdraw(c) => serde_json::to_value(c),
            AccountCommand::Freeze(c) => serde_json::to_value(c),
            AccountCommand::Unfreeze(c) => serde_json::to_value(c),
            AccountCommand::Close(c) => serde_json::to_value(c),
            AccountCommand::SetLimits(c) => serde_json::to_value(c),
            AccountCommand::Debit(c)
            | AccountCommand::Credit(c)
            | AccountCommand::Refund(c)
            | AccountCommand::Settle(c) => serde_json::to_value(c),
        };
        // Plain structs of strings and integers always serialize.
        value.unwrap_or(serde_json::Value::Null)
    }
}
