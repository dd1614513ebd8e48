//! Re-derives an account from its stored events with the domain's own `apply`, after the same
//! upcasting every reader uses, checking on the way that each event could have been produced
//! by the rules: a stated `balance_after` must be the previous balance plus the event's
//! postings, the account's limits must hold after every event that moves against them, and a
//! hold is reserved once and released once.

use std::collections::BTreeSet;

use cqrs_es::{Aggregate, DomainEvent};
use domain::account::upcast::read_event;
use domain::account::{FundsHeld, FundsReleased, LegsPosted};
use domain::ledger::{LEGS_MAX, SystemAccount, postings};
use domain::validate;
use domain::{AMOUNT_MAX_MINOR, Account, AccountEvent, AccountStatus};
use uuid::Uuid;

use crate::StoredEvent;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoldError {
    Unreadable(String),
    Inconsistent(String),
}

impl FoldError {
    pub fn reason(self) -> String {
        match self {
            FoldError::Unreadable(r) | FoldError::Inconsistent(r) => r,
        }
    }
}

/// An account as of the events folded so far.
#[derive(Debug, Clone, Default)]
pub struct AccountFold {
    pub state: Account,
    pub version: i64,
    /// Holds released on this account: the state forgets them, a second release must not.
    ended_holds: BTreeSet<Uuid>,
}

/// `event`'s payload as today's account event (upcast), of the type its row says.
pub fn read(event: &StoredEvent) -> Result<AccountEvent, FoldError> {
    let parsed = read_event(&event.event_type, &event.event_version, &event.payload)
        .map_err(|e| FoldError::Unreadable(e.to_string()))?;
    let payload_type = parsed.event_type();
    if payload_type != event.event_type {
        return Err(FoldError::Unreadable(format!(
            "event_type column says {} but the payload is {payload_type}",
            event.event_type
        )));
    }
    Ok(parsed)
}

impl AccountFold {
    pub fn apply(&mut self, event: &StoredEvent) -> Result<(), FoldError> {
        let parsed = read(event)?;
        self.apply_parsed(&parsed, event.sequence)
    }

    /// Folds an event already read with [`read`].
    pub fn apply_parsed(&mut self, event: &AccountEvent, sequence: i64) -> Result<(), FoldError> {
        self.check(event).map_err(FoldError::Inconsistent)?;
        let before = (self.state.balance, self.state.available());
        if let AccountEvent::FundsReleased(e) = event {
            self.ended_holds.insert(e.hold_id);
        }
        self.state.apply(event.clone());
        self.version = sequence;
        self.check_limits(event, before)
            .map_err(FoldError::Inconsistent)
    }

    fn check(&self, event: &AccountEvent) -> Result<(), String> {
        let status = self.state.status;
        match event {
            AccountEvent::AccountOpened(_) if status != AccountStatus::Unopened => {
                return Err("opened twice".into());
            }
            AccountEvent::AccountOpened(_) => return Ok(()),
            _ if status == AccountStatus::Unopened => {
                return Err("event before the account was opened".into());
            }
            _ if status == AccountStatus::Closed => {
                return Err("event after the account was closed".into());
            }
            _ => {}
        }
        self.check_stated_balance(event)?;
        let frozen = status == AccountStatus::Frozen;
        let in_flight = |id: &Uuid| self.state.transfers_in_flight.contains(id);
        match event {
            AccountEvent::MoneyWithdrawn(_) if frozen => {
                Err("withdrawal from a frozen account".into())
            }
            AccountEvent::TransferDebited(_) if frozen => {
                Err("transfer debited from a frozen account".into())
            }
            AccountEvent::TransferDebited(e) if in_flight(&e.transfer_id) => {
                Err(format!("transfer {} debited twice", e.transfer_id))
            }
            AccountEvent::TransferRefunded(e) if !in_flight(&e.transfer_id) => Err(format!(
                "refund of transfer {} that was not in flight",
                e.transfer_id
            )),
            AccountEvent::TransferSettled(e) if !in_flight(&e.transfer_id) => Err(format!(
                "settle of transfer {} that was not in flight",
                e.transfer_id
            )),
            AccountEvent::AccountFrozen(_) if status != AccountStatus::Open => {
                Err("frozen while not open".into())
            }
            AccountEvent::AccountUnfrozen(_) if !frozen => Err("unfrozen while not frozen".into()),
            AccountEvent::AccountClosed(_) => self.check_close(),
            AccountEvent::LegsPosted(e) => self.check_legs(e),
            AccountEvent::FundsHeld(e) => self.check_held(e),
            AccountEvent::FundsReleased(e) => self.check_released(e),
            AccountEvent::LimitsSet(e) => {
                if !(0..=AMOUNT_MAX_MINOR).contains(&e.overdraft_limit) {
                    return Err(format!(
                        "overdraft limit {} out of range",
                        e.overdraft_limit
                    ));
                }
                match e.max_balance {
                    Some(max) if max < 0 => Err(format!("maximum balance {max} is negative")),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// A stated `balance_after` must be the previous balance plus the event's own postings,
    /// each amount within 1..=10^15.
    fn check_stated_balance(&self, event: &AccountEvent) -> Result<(), String> {
        let (what, amount, stated) = match event {
            AccountEvent::MoneyDeposited(e) => ("deposit", e.amount, e.balance_after),
            AccountEvent::MoneyWithdrawn(e) => ("withdrawal", e.amount, e.balance_after),
            AccountEvent::TransferDebited(e) => ("transfer debit", e.amount, e.balance_after),
            AccountEvent::TransferCredited(e) => ("transfer credit", e.amount, e.balance_after),
            AccountEvent::TransferRefunded(e) => ("transfer refund", e.amount, e.balance_after),
            // Its legs' amounts are checked one by one (`check_legs`), before this is reached.
            AccountEvent::LegsPosted(e) => {
                legs_in_range(e)?;
                let change = postings::own_change(event);
                ("legs", change, e.balance_after)
            }
            _ => return Ok(()),
        };
        let balance = self.state.balance;
        let in_range = matches!(event, AccountEvent::LegsPosted(_))
            || (1..=AMOUNT_MAX_MINOR).contains(&amount);
        // Amounts are in range here, so the postings' sum cannot overflow.
        let expected = in_range
            .then(|| balance.checked_add(postings::own_change(event)))
            .flatten();
        if expected == Some(stated) {
            return Ok(());
        }
        Err(format!(
            "{what} of {amount} on a balance of {balance} states balance_after {stated}"
        ))
    }

    fn check_close(&self) -> Result<(), String> {
        let state = &self.state;
        if state.balance != 0 {
            return Err(format!("closed with a balance of {}", state.balance));
        }
        if !state.transfers_in_flight.is_empty() {
            return Err("closed with transfers in flight".into());
        }
        if !state.holds.is_empty() {
            return Err(format!("closed with {} holds open", state.holds.len()));
        }
        Ok(())
    }

    /// Each leg names a real other side in this account's currency, in the transaction's
    /// order; money goes out only from an account that is not frozen.
    fn check_legs(&self, e: &LegsPosted) -> Result<(), String> {
        let mut previous: Option<u16> = None;
        for leg in &e.legs {
            if previous.is_some_and(|p| leg.leg <= p) || usize::from(leg.leg) >= LEGS_MAX {
                return Err(format!("leg {} out of order or out of range", leg.leg));
            }
            previous = Some(leg.leg);
            if leg.counterparty == self.state.id {
                return Err(format!("leg {} from the account to itself", leg.leg));
            }
            if SystemAccount::is_system_id(&leg.counterparty) {
                let system: SystemAccount = leg
                    .counterparty
                    .parse()
                    .map_err(|e| format!("leg {}: {e}", leg.leg))?;
                if system.currency != self.state.currency {
                    return Err(format!(
                        "leg {} with {} on an account in {}",
                        leg.leg, leg.counterparty, self.state.currency
                    ));
                }
            } else if validate::aggregate_id("counterparty", &leg.counterparty).is_err() {
                return Err(format!(
                    "leg {}: counterparty is not an account id",
                    leg.leg
                ));
            }
            if leg.amount < 0 && self.state.status == AccountStatus::Frozen {
                return Err(format!("leg {} debited a frozen account", leg.leg));
            }
        }
        Ok(())
    }

    fn check_held(&self, e: &FundsHeld) -> Result<(), String> {
        if !(1..=AMOUNT_MAX_MINOR).contains(&e.amount) {
            return Err(format!("hold {} of {} out of range", e.hold_id, e.amount));
        }
        if self.state.status == AccountStatus::Frozen {
            return Err(format!("hold {} placed on a frozen account", e.hold_id));
        }
        if self.state.holds.contains_key(&e.hold_id) || self.ended_holds.contains(&e.hold_id) {
            return Err(format!("hold {} placed twice", e.hold_id));
        }
        Ok(())
    }

    fn check_released(&self, e: &FundsReleased) -> Result<(), String> {
        if self.ended_holds.contains(&e.hold_id) {
            return Err(format!("hold {} released twice", e.hold_id));
        }
        match self.state.holds.get(&e.hold_id) {
            None => Err(format!("release of hold {} that was never held", e.hold_id)),
            Some(held) if *held != e.amount => Err(format!(
                "release of {} for hold {} of {held}",
                e.amount, e.hold_id
            )),
            Some(_) => Ok(()),
        }
    }

    /// After an event that lowered the available balance, it must be at or above
    /// `-overdraft_limit`; after one that raised the balance, it must be at or below
    /// `max_balance`. A refund is exempt from the maximum: it gives back what the account had,
    /// and the rules never refuse it.
    fn check_limits(&self, event: &AccountEvent, before: (i64, i64)) -> Result<(), String> {
        let state = &self.state;
        let limits_set = matches!(event, AccountEvent::LimitsSet(_));
        let (balance_before, available_before) = before;
        let available = state.available();
        if (available < available_before || limits_set) && available < -state.overdraft_limit {
            return Err(format!(
                "available balance {available} (balance {}, held {}) is below the overdraft limit of {}",
                state.balance, state.held, state.overdraft_limit
            ));
        }
        let raised =
            state.balance > balance_before && !matches!(event, AccountEvent::TransferRefunded(_));
        if let Some(max) = state.max_balance
            && (raised || limits_set)
            && state.balance > max
        {
            return Err(format!(
                "balance {} is above the maximum balance of {max}",
                state.balance
            ));
        }
        Ok(())
    }
}

/// 1 to 64 legs, each moving 1..=10^15 one way or the other.
fn legs_in_range(e: &LegsPosted) -> Result<(), String> {
    if e.legs.is_empty() || e.legs.len() > LEGS_MAX {
        return Err(format!("{} legs (1 to {LEGS_MAX} expected)", e.legs.len()));
    }
    for leg in &e.legs {
        let size = leg.amount.checked_abs().unwrap_or(i64::MAX);
        if !(1..=AMOUNT_MAX_MINOR).contains(&size) {
            return Err(format!("leg {} of {} out of range", leg.leg, leg.amount));
        }
    }
    Ok(())
}
