//! The Account aggregate: a balance in one currency that can be frozen and closed.
//!
//! Rules: amounts are 1..=10^15 minor units; the balance never goes below zero and
//! never overflows, not even when a transfer in flight is refunded; frozen accounts take deposits but not withdrawals; an account closes only at
//! a zero balance; a closed account accepts nothing.

mod commands;
mod error;
mod events;
pub mod upcast;

pub use commands::{
    ACCOUNT_COMMAND_NAMES, AccountCommand, Close, DecodeError, Deposit, Freeze, OpenAccount,
    SetLimits, TransferStep, Unfreeze, Withdraw,
};
pub use error::AccountError;
pub use events::{
    ACCOUNT_EVENT_TYPES, ACCOUNT_EVENT_VERSION, AccountClosed, AccountEvent, AccountFrozen,
    AccountOpened, AccountUnfrozen, DepositChannel, FundsHeld, FundsReleased, HoldEnd, LegsPosted,
    LimitsSet, MONEY_DEPOSITED_VERSION, MoneyDeposited, MoneyWithdrawn, PostedLeg,
    TransferCredited, TransferDebited, TransferRefunded, TransferSettled,
};

use std::collections::{BTreeMap, BTreeSet};

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::{self, Amount};
use crate::transfer::{Transfer, TransferStatus};
use crate::validate;

/// Most holds open at once on one account: each is part of the account's state, which every
/// decision on the account reads.
pub const OPEN_HOLDS_MAX: usize = 1_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    /// No `AccountOpened` yet: the id is free.
    #[default]
    Unopened,
    Open,
    Frozen,
    Closed,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Unopened => "unopened",
            AccountStatus::Open => "open",
            AccountStatus::Frozen => "frozen",
            AccountStatus::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub owner: String,
    pub currency: String,
    /// Minor units; never negative.
    pub balance: i64,
    pub status: AccountStatus,
    /// Transfers debited from this account and neither settled nor refunded. While any is
    /// open the account cannot close, so a refund always has somewhere to go.
    #[serde(default)]
    pub transfers_in_flight: BTreeSet<Uuid>,
    /// Open holds and their amounts; `held` is their sum.
    #[serde(default)]
    pub holds: BTreeMap<Uuid, i64>,
    /// Minor units reserved by open holds: part of the balance, not available.
    #[serde(default)]
    pub held: i64,
    /// How far below zero the available balance may go (0: not at all).
    #[serde(default)]
    pub overdraft_limit: i64,
    /// The highest balance the account may reach.
    #[serde(default)]
    pub max_balance: Option<i64>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// What a command needs to know besides the account, looked up by the command-service and
/// passed in as data: for a transfer step, the transfer as recorded; for every command, the
/// owner the sender's token is bound to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountServices {
    pub transfer: Option<Transfer>,
    /// The sender's `owner` claim (`None`: any owner). Part of the decision rather than a check
    /// before it, so it is judged on the very state the command is decided on: an id that is
    /// free when a check runs may be opened for someone else by the time the command is.
    pub owner: Option<String>,
}

impl Account {
    /// Decides which events a command produces, without changing `self`. Transfer steps are
    /// refused here: they need [`Account::decide_with`] and the transfer.
    pub fn decide(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        self.decide_with(command, &AccountServices::default())
    }

    /// This is the whole of the business logic, synchronous and pure, so property tests can
    /// drive it directly; [`Aggregate::handle`] only forwards its result to cqrs-es.
    pub fn decide_with(
        &self,
        command: &AccountCommand,
        services: &AccountServices,
    ) -> Result<Vec<AccountEvent>, AccountError> {
        if self.hidden_from(services.owner.as_deref(), command) {
            // To this sender, another owner's account is an id nobody opened: decided as one,
            // every answer is a missing account's word for word (a field error too, in the
            // same order), and nothing that needs an opened account can happen.
            let unowned = AccountServices {
                owner: None,
                ..services.clone()
            };
            return Account::default().decide_with(command, &unowned).map_err(
                |error| match error {
                    AccountError::NotFound => AccountError::NotVisible,
                    other => other,
                },
            );
        }
        validate::aggregate_id("account_id", command.account_id())?;
        match command {
            AccountCommand::Open(c) => {
                validate::text("owner", &c.owner, validate::OWNER_LEN_MAX)?;
                validate::currency("currency", &c.currency)?;
                validate::metadata("metadata", &c.metadata)?;
                if self.status != AccountStatus::Unopened {
                    return Err(AccountError::AlreadyExists);
                }
                Ok(vec![AccountEvent::AccountOpened(AccountOpened {
                    account_id: c.account_id.clone(),
                    owner: c.owner.clone(),
                    currency: c.currency.clone(),
                    metadata: c.metadata.clone(),
                })])
            }
            AccountCommand::Deposit(c) => {
                let amount = Amount::new(c.amount)?;
                validate::optional_text("reference", &c.reference, validate::REFERENCE_LEN_MAX)?;
                self.require_live()?;
                let balance_after = self.credit_within_limits(amount, "deposit")?;
                Ok(vec![AccountEvent::MoneyDeposited(MoneyDeposited {
                    amount: amount.minor(),
                    reference: c.reference.clone(),
                    balance_after,
                    channel: c.channel,
                })])
            }
            AccountCommand::Withdraw(c) => {
                let amount = Amount::new(c.amount)?;
                validate::optional_text("reference", &c.reference, validate::REFERENCE_LEN_MAX)?;
                self.require_live()?;
                if self.status == AccountStatus::Frozen {
                    return Err(AccountError::Frozen);
                }
                let balance_after = self.debit_within_limits(amount, "withdrawal")?;
                Ok(vec![AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
                    amount: amount.minor(),
                    reference: c.reference.clone(),
                    balance_after,
                })])
            }
            AccountCommand::Freeze(c) => {
                validate::text("reason", &c.reason, validate::REASON_LEN_MAX)?;
                self.require_live()?;
                if self.status == AccountStatus::Frozen {
                    return Err(AccountError::AlreadyFrozen);
                }
                Ok(vec![AccountEvent::AccountFrozen(AccountFrozen {
                    reason: c.reason.clone(),
                })])
            }
            AccountCommand::Unfreeze(_) => {
                self.require_live()?;
                if self.status != AccountStatus::Frozen {
                    return Err(AccountError::NotFrozen);
                }
                Ok(vec![AccountEvent::AccountUnfrozen(AccountUnfrozen {})])
            }
            AccountCommand::Close(_) => {
                self.require_live()?;
                // A freeze is a hold (e.g. compliance): closing would release it silently.
                if self.status == AccountStatus::Frozen {
                    return Err(AccountError::Frozen);
                }
                if !self.transfers_in_flight.is_empty() {
                    return Err(AccountError::TransfersInFlight {
                        count: self.transfers_in_flight.len(),
                    });
                }
                if !self.holds.is_empty() {
                    return Err(AccountError::HoldsOpen {
                        count: self.holds.len(),
                    });
                }
                if self.balance != 0 {
                    return Err(AccountError::BalanceNotZero {
                        balance: self.balance,
                    });
                }
                Ok(vec![AccountEvent::AccountClosed(AccountClosed {})])
            }
            AccountCommand::SetLimits(c) => {
                validate::text("reason", &c.reason, validate::REASON_LEN_MAX)?;
                if !(0..=money::AMOUNT_MAX_MINOR).contains(&c.overdraft_limit) {
                    return Err(AccountError::invalid(
                        "overdraft_limit",
                        format!("must be 0 to {}", money::AMOUNT_MAX_MINOR),
                    ));
                }
                if c.max_balance.is_some_and(|max| max < 0) {
                    return Err(AccountError::invalid("max_balance", "must not be negative"));
                }
                self.require_live()?;
                let limited = Account {
                    overdraft_limit: c.overdraft_limit,
                    max_balance: c.max_balance,
                    ..self.clone()
                };
                limited.check_within_limits("new limits", 0)?;
                Ok(vec![AccountEvent::LimitsSet(LimitsSet {
                    overdraft_limit: c.overdraft_limit,
                    max_balance: c.max_balance,
                    reason: c.reason.clone(),
                })])
            }
            AccountCommand::Debit(c) => {
                if self.transfers_in_flight.contains(&c.transfer_id) {
                    return Ok(vec![]); // already debited
                }
                let transfer = self.transfer_step(services, TransferStatus::Requested, "debit")?;
                if transfer.from != self.id {
                    return Err(not_due("this account is not the transfer's source"));
                }
                self.require_live()?;
                if self.status == AccountStatus::Frozen {
                    return Err(AccountError::Frozen);
                }
                let balance_after =
                    self.debit_within_limits(Amount::new(transfer.amount)?, "transfer debit")?;
                Ok(vec![AccountEvent::TransferDebited(TransferDebited {
                    transfer_id: c.transfer_id,
                    to: transfer.to.clone(),
                    amount: transfer.amount,
                    balance_after,
                    settled: false,
                })])
            }
            AccountCommand::Credit(c) => {
                let transfer = self.transfer_step(services, TransferStatus::Debited, "credit")?;
                if transfer.to != self.id {
                    return Err(not_due("this account is not the transfer's destination"));
                }
                // Frozen accounts take deposits, and so credits.
                self.require_live()?;
                let balance_after =
                    self.credit_within_limits(Amount::new(transfer.amount)?, "transfer credit")?;
                Ok(vec![AccountEvent::TransferCredited(TransferCredited {
                    transfer_id: c.transfer_id,
                    from: transfer.from.clone(),
                    amount: transfer.amount,
                    balance_after,
                })])
            }
            AccountCommand::Refund(c) | AccountCommand::Settle(c) => {
                let refund = matches!(command, AccountCommand::Refund(_));
                if !self.transfers_in_flight.contains(&c.transfer_id) {
                    return Ok(vec![]); // already settled or refunded
                }
                let (due, action) = if refund {
                    (TransferStatus::Refunding, "refund")
                } else {
                    (TransferStatus::Credited, "settle")
                };
                let transfer = self.transfer_step(services, due, action)?;
                if !refund {
                    return Ok(vec![AccountEvent::TransferSettled(TransferSettled {
                        transfer_id: c.transfer_id,
                    })]);
                }
                // An in-flight transfer keeps the account from closing, so it is live here, and
                // `credit_leaving_room` kept room for this amount, so it fits.
                let balance_after = money::credit(self.balance, Amount::new(transfer.amount)?)?;
                Ok(vec![AccountEvent::TransferRefunded(TransferRefunded {
                    transfer_id: c.transfer_id,
                    amount: transfer.amount,
                    balance_after,
                })])
            }
        }
    }

    /// Whether this account belongs to someone other than `owner`, the sender's. Opening is
    /// not concerned: its owner comes from the body (checked against the token before), and
    /// a taken id is refused as taken, whoever holds it.
    fn hidden_from(&self, owner: Option<&str>, command: &AccountCommand) -> bool {
        owner.is_some_and(|owner| {
            self.status != AccountStatus::Unopened
                && self.owner != owner
                && !matches!(command, AccountCommand::Open(_))
        })
    }

    /// The transfer of a step, which must be in the state that calls for that step.
    fn transfer_step<'a>(
        &self,
        services: &'a AccountServices,
        due: TransferStatus,
        action: &str,
    ) -> Result<&'a Transfer, AccountError> {
        let transfer = services
            .transfer
            .as_ref()
            .filter(|t| t.status != TransferStatus::Unrequested)
            .ok_or(AccountError::TransferNotFound)?;
        if transfer.status != due {
            return Err(not_due(format!(
                "the transfer is {}; cannot {action}",
                transfer.status.as_str()
            )));
        }
        Ok(transfer)
    }

    /// `balance + amount` for money coming in (a deposit, a transfer's credit), refused unless
    /// it leaves room for the refund of every transfer in flight from this account.
    ///
    /// Why: a refund gives a debited amount back after the destination refused the credit; it
    /// cannot be refused in turn (the transfer would stay stuck with the amount held), so it
    /// must always fit. Debits and refunds keep `balance + held` constant and settles and
    /// withdrawals lower it, so bounding it on the way in is enough. The amounts held are not
    /// part of the state, but each is at most `AMOUNT_MAX_MINOR`: the bound is
    /// `i64::MAX - in flight × AMOUNT_MAX_MINOR`, which costs 0.01% of the range per transfer
    /// in flight and nothing once they are settled.
    fn credit_leaving_room(&self, amount: Amount) -> Result<i64, AccountError> {
        let balance_after = money::credit(self.balance, amount)?;
        let in_flight = i64::try_from(self.transfers_in_flight.len()).unwrap_or(i64::MAX);
        let room = in_flight.saturating_mul(money::AMOUNT_MAX_MINOR);
        if balance_after > i64::MAX.saturating_sub(room) {
            return Err(AccountError::BalanceOverflow {
                balance: self.balance,
                amount: amount.minor(),
            });
        }
        Ok(balance_after)
    }

    /// The balance less what open holds reserve.
    pub fn available(&self) -> i64 {
        self.balance.saturating_sub(self.held)
    }

    /// `balance - amount` for money going out (a withdrawal, a debit, a leg out), refused
    /// unless the available balance stays at or above `-overdraft_limit`. Without an overdraft
    /// the refusal is `insufficient_funds`, as before limits existed; with one, `limit_exceeded`.
    pub(crate) fn debit_within_limits(
        &self,
        amount: Amount,
        what: &'static str,
    ) -> Result<i64, AccountError> {
        let balance_after =
            self.balance
                .checked_sub(amount.minor())
                .ok_or(AccountError::InsufficientFunds {
                    balance: self.available(),
                    requested: amount.minor(),
                })?;
        let available_after = balance_after.checked_sub(self.held);
        if available_after.is_none_or(|available| available < -self.overdraft_limit) {
            if self.overdraft_limit == 0 {
                return Err(AccountError::InsufficientFunds {
                    balance: self.available(),
                    requested: amount.minor(),
                });
            }
            return Err(self.limit_exceeded("overdraft_limit", what, amount.minor()));
        }
        Ok(balance_after)
    }

    /// Funds reserved by a hold: the same test as a debit, the balance unchanged; and at most
    /// [`OPEN_HOLDS_MAX`] holds open at once (each is part of the account's state).
    pub(crate) fn hold_within_limits(&self, amount: Amount) -> Result<i64, AccountError> {
        if self.holds.len() >= OPEN_HOLDS_MAX {
            return Err(self.limit_exceeded("open_holds", "hold", amount.minor()));
        }
        let reserved = Account {
            id: self.id.clone(),
            balance: self.balance,
            held: self.held,
            overdraft_limit: self.overdraft_limit,
            ..Account::default()
        };
        reserved.debit_within_limits(amount, "hold")?;
        self.held
            .checked_add(amount.minor())
            .ok_or(AccountError::BalanceOverflow {
                balance: self.held,
                amount: amount.minor(),
            })
    }

    /// `balance + amount` for money coming in, refused above `max_balance` and where
    /// [`Account::credit_leaving_room`] refuses.
    pub(crate) fn credit_within_limits(
        &self,
        amount: Amount,
        what: &'static str,
    ) -> Result<i64, AccountError> {
        let balance_after = self.credit_leaving_room(amount)?;
        if self.max_balance.is_some_and(|max| balance_after > max) {
            return Err(self.limit_exceeded("max_balance", what, amount.minor()));
        }
        Ok(balance_after)
    }

    /// Whether the account as it stands is inside its limits (`amount` is only reported).
    fn check_within_limits(&self, what: &'static str, amount: i64) -> Result<(), AccountError> {
        if self.available() < -self.overdraft_limit {
            return Err(self.limit_exceeded("overdraft_limit", what, amount));
        }
        if self.max_balance.is_some_and(|max| self.balance > max) {
            return Err(self.limit_exceeded("max_balance", what, amount));
        }
        Ok(())
    }

    fn limit_exceeded(&self, limit: &'static str, what: &'static str, amount: i64) -> AccountError {
        let limit_value = match limit {
            "max_balance" => self.max_balance.unwrap_or(i64::MAX),
            "open_holds" => i64::try_from(OPEN_HOLDS_MAX).unwrap_or(i64::MAX),
            _ => self.overdraft_limit,
        };
        AccountError::LimitExceeded {
            account_id: self.id.clone(),
            limit,
            limit_value,
            what,
            amount,
            balance: self.balance,
            held: self.held,
        }
    }

    /// Opened and not closed.
    pub(crate) fn require_live(&self) -> Result<(), AccountError> {
        match self.status {
            AccountStatus::Unopened => Err(AccountError::NotFound),
            AccountStatus::Closed => Err(AccountError::Closed),
            AccountStatus::Open | AccountStatus::Frozen => Ok(()),
        }
    }
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = AccountServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide_with(&command, services)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            AccountEvent::AccountOpened(e) => {
                self.id = e.account_id;
                self.owner = e.owner;
                self.currency = e.currency;
                self.metadata = e.metadata;
                self.balance = 0;
                self.status = AccountStatus::Open;
            }
            // The event states the resulting balance; audit verify re-derives it from amounts,
            // so a stored inconsistency is reported rather than silently folded in.
            AccountEvent::MoneyDeposited(e) => self.balance = e.balance_after,
            AccountEvent::MoneyWithdrawn(e) => self.balance = e.balance_after,
            AccountEvent::AccountFrozen(_) => self.status = AccountStatus::Frozen,
            AccountEvent::AccountUnfrozen(_) => self.status = AccountStatus::Open,
            AccountEvent::AccountClosed(_) => self.status = AccountStatus::Closed,
            AccountEvent::TransferDebited(e) => {
                self.balance = e.balance_after;
                if !e.settled {
                    self.transfers_in_flight.insert(e.transfer_id);
                }
            }
            AccountEvent::TransferCredited(e) => self.balance = e.balance_after,
            AccountEvent::TransferRefunded(e) => {
                self.balance = e.balance_after;
                self.transfers_in_flight.remove(&e.transfer_id);
            }
            AccountEvent::TransferSettled(e) => {
                self.transfers_in_flight.remove(&e.transfer_id);
            }
            AccountEvent::LegsPosted(e) => self.balance = e.balance_after,
            AccountEvent::FundsHeld(e) => {
                self.holds.insert(e.hold_id, e.amount);
                self.held = self.held.saturating_add(e.amount);
            }
            AccountEvent::FundsReleased(e) => {
                if let Some(amount) = self.holds.remove(&e.hold_id) {
                    self.held = self.held.saturating_sub(amount);
                }
            }
            AccountEvent::LimitsSet(e) => {
                self.overdraft_limit = e.overdraft_limit;
                self.max_balance = e.max_balance;
            }
        }
    }
}

fn not_due(reason: impl Into<String>) -> AccountError {
    AccountError::StepNotDue {
        reason: reason.into(),
    }
}
