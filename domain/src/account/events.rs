//! Account events: the facts stored in the `events` table and published on
//! `tally.evt.account.<id>`. They are the compatibility boundary: a change means a new version
//! and an upcaster, never an edit. These types generate `schemas/events/account.*.json`.

use cqrs_es::DomainEvent;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Version of every account event's payload as written today.
pub const ACCOUNT_EVENT_VERSION: &str = "1.0";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AccountOpened {
    pub account_id: String,
    pub owner: String,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MoneyDeposited {
    /// Minor units.
    pub amount: i64,
    pub reference: String,
    /// The balance after this deposit, so that a reader of one event knows the running balance.
    pub balance_after: i64,
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

/// Stored as `{"<EventType>": {payload}}` (serde's external tagging), as postgres-es writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AccountEvent {
    AccountOpened(AccountOpened),
    MoneyDeposited(MoneyDeposited),
    MoneyWithdrawn(MoneyWithdrawn),
    AccountFrozen(AccountFrozen),
    AccountUnfrozen(AccountUnfrozen),
    AccountClosed(AccountClosed),
}

/// Event type names as stored in `events.event_type`.
pub const ACCOUNT_EVENT_TYPES: [&str; 6] = [
    "AccountOpened",
    "MoneyDeposited",
    "MoneyWithdrawn",
    "AccountFrozen",
    "AccountUnfrozen",
    "AccountClosed",
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
        };
        name.to_owned()
    }

    fn event_version(&self) -> String {
        ACCOUNT_EVENT_VERSION.to_owned()
    }
}
