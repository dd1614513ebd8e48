//! Account events: the facts stored in the `events` table and published on
//! `tally.evt.account.<id>`. They are the compatibility boundary: a change means a new version
//! and an upcaster, never an edit. These types generate `schemas/events/account.*.json`.

use cqrs_es::DomainEvent;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the account events' payloads as written today, except [`MoneyDeposited`].
pub const ACCOUNT_EVENT_VERSION: &str = "1.0";

/// Version of `MoneyDeposited` as written today: 2.0 added `channel`. Rows stored as 1.0 are
/// upcast on every read path (see `upcast.rs`).
pub const MONEY_DEPOSITED_VERSION: &str = "2.0";

/// How money arrived. `unspecified` is what a client that does not say gets, and what every
/// deposit recorded before the field existed (event version 1.0) reads as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DepositChannel {
    #[default]
    Unspecified,
    Cash,
    Card,
    BankTransfer,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AccountOpened {
    pub account_id: String,
    pub owner: String,
    pub currency: String,
    /// The client's metadata; absent when empty (as on every event before it existed).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MoneyDeposited {
    /// Minor units.
    pub amount: i64,
    pub reference: String,
    /// The balance after this deposit, so that a reader of one event knows the running balance.
    pub balance_after: i64,
    /// Since version 2.0. Required in the payload, so a 1.0 row that skipped the upcaster fails
    /// loudly instead of reading as a default.
    pub channel: DepositChannel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MoneyWithdrawn {
    /// Minor units.
    pub amount: i64,
    pub reference: String,
    pub balance_after: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AccountFrozen {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AccountUnfrozen {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AccountClosed {}

/// The transfer's amount left this account. Debited step by step, it stays in flight until
/// settled or refunded; debited by a transfer settled at once (`settled`), it never is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TransferDebited {
    pub transfer_id: Uuid,
    /// The destination account.
    pub to: String,
    /// Minor units.
    pub amount: i64,
    pub balance_after: i64,
    /// Written with the credit of the destination in one transaction (a transfer settled at
    /// once): the debit is final, with no hold to settle. Absent (false) on a step's debit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub settled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TransferCredited {
    pub transfer_id: Uuid,
    /// The source account.
    pub from: String,
    /// Minor units.
    pub amount: i64,
    pub balance_after: i64,
}

/// The destination refused the credit: the debited amount came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TransferRefunded {
    pub transfer_id: Uuid,
    /// Minor units.
    pub amount: i64,
    pub balance_after: i64,
}

/// The destination was credited: the transfer no longer holds this account open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TransferSettled {
    pub transfer_id: Uuid,
}

/// One leg of a posting as this account sees it: the other side and the signed amount
/// (positive: money in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PostedLeg {
    /// The leg's index in its transaction (0-based).
    pub leg: u16,
    /// The account on the other side: a client account or a system account (`@world:EUR`).
    pub counterparty: String,
    /// Minor units; positive when money came in, negative when it went out.
    pub amount: i64,
}

/// A multi-leg transaction (or a captured hold, whose id is the transaction's) moved money
/// in or out of this account: every leg touching it, in the transaction's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LegsPosted {
    /// The transaction, or the hold whose capture this is (`capture`).
    pub transaction_id: Uuid,
    pub legs: Vec<PostedLeg>,
    pub balance_after: i64,
    /// The capture of hold `transaction_id`, not a transaction: hold ids and transaction ids
    /// are chosen by clients independently, so one may equal the other.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capture: bool,
}

/// Funds reserved: the posted balance is unchanged, the available balance is lower.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FundsHeld {
    pub hold_id: Uuid,
    /// Minor units.
    pub amount: i64,
    /// When the hold lapses by itself, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Why a hold's funds were released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HoldEnd {
    /// Captured (in full or in part; a capture's posting is its own `LegsPosted`).
    Captured,
    Voided,
    Expired,
}

/// A hold ended: its whole amount is no longer reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FundsReleased {
    pub hold_id: Uuid,
    /// Minor units: the hold's whole amount.
    pub amount: i64,
    pub end: HoldEnd,
}

/// The account's limits as of this event (replacing earlier ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LimitsSet {
    /// How far below zero the available balance may go (0: not at all).
    pub overdraft_limit: i64,
    /// The highest posted balance the account may reach; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_balance: Option<i64>,
    pub reason: String,
}

/// Stored as `{"<EventType>": {payload}}` (serde's external tagging), as postgres-es writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AccountEvent {
    AccountOpened(AccountOpened),
    MoneyDeposited(MoneyDeposited),
    MoneyWithdrawn(MoneyWithdrawn),
    AccountFrozen(AccountFrozen),
    AccountUnfrozen(AccountUnfrozen),
    AccountClosed(AccountClosed),
    TransferDebited(TransferDebited),
    TransferCredited(TransferCredited),
    TransferRefunded(TransferRefunded),
    TransferSettled(TransferSettled),
    LegsPosted(LegsPosted),
    FundsHeld(FundsHeld),
    FundsReleased(FundsReleased),
    LimitsSet(LimitsSet),
}

/// Event type names as stored in `events.event_type`.
pub const ACCOUNT_EVENT_TYPES: [&str; 14] = [
    "AccountOpened",
    "MoneyDeposited",
    "MoneyWithdrawn",
    "AccountFrozen",
    "AccountUnfrozen",
    "AccountClosed",
    "TransferDebited",
    "TransferCredited",
    "TransferRefunded",
    "TransferSettled",
    "LegsPosted",
    "FundsHeld",
    "FundsReleased",
    "LimitsSet",
];

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        let name = match self {
            AccountEvent::AccountOpened(_) => "AccountOpened",
            AccountEvent::MoneyDeposited(_) => "MoneyDeposited",
            AccountEvent::MoneyWithdrawn(_) => "MoneyWithdrawn",
            AccountEvent::AccountFrozen(_) => "AccountFrozen",
            AccountEvent::AccountUnfrozen(_) => "AccountUnfrozen",
            AccountEvent::AccountClosed(_) => "AccountClosed",
            AccountEvent::TransferDebited(_) => "TransferDebited",
            AccountEvent::TransferCredited(_) => "TransferCredited",
            AccountEvent::TransferRefunded(_) => "TransferRefunded",
            AccountEvent::TransferSettled(_) => "TransferSettled",
            AccountEvent::LegsPosted(_) => "LegsPosted",
            AccountEvent::FundsHeld(_) => "FundsHeld",
            AccountEvent::FundsReleased(_) => "FundsReleased",
            AccountEvent::LimitsSet(_) => "LimitsSet",
        };
        name.to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            AccountEvent::MoneyDeposited(_) => MONEY_DEPOSITED_VERSION,
            _ => ACCOUNT_EVENT_VERSION,
        }
        .to_owned()
    }
}
