//! Re-derives an account from its stored events with the domain's own `apply`, after the same
//! upcasting every reader uses, checking on the way that each event could have been produced
//! by the rules (a stated `balance_after` must follow from the amount, and so on).

use cqrs_es::{Aggregate, DomainEvent};
use domain::account::upcast::read_event;
use domain::{Account, AccountEvent, AccountStatus};

use crate::StoredEvent;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoldError {
    Unreadable(String),
    Inconsistent(String),
}

/// An account as of the events folded so far.
#[derive(Debug, Clone, Default)]
pub struct AccountFold {
    pub state: Account,
    pub version: i64,
}

impl AccountFold {
    pub fn apply(&mut self, event: &StoredEvent) -> Result<(), FoldError> {
        let parsed = read_event(&event.event_type, &event.event_version, &event.payload)
            .map_err(|e| FoldError::Unreadable(e.to_string()))?;
        let payload_type = parsed.event_type();
        if payload_type != event.event_type {
            return Err(FoldError::Unreadable(format!(
                "event_type column says {} but the payload is {payload_type}",
                event.event_type
            )));
        }
        self.check(&parsed).map_err(FoldError::Inconsistent)?;
        self.state.apply(parsed);
        self.version = event.sequence;
        Ok(())
    }

    fn check(&self, event: &AccountEvent) -> Result<(), String> {
        let status = self.state.status;
        let balance = self.state.balance;
        match event {
            AccountEvent::AccountOpened(_) if status != AccountStatus::Unopened => {
                Err("opened twice".into())
            }
            AccountEvent::AccountOpened(_) => Ok(()),
            _ if status == AccountStatus::Unopened => {
                Err("event before the account was opened".into())
            }
            _ if status == AccountStatus::Closed => {
                Err("event after the account was closed".into())
            }
            AccountEvent::MoneyDeposited(e) => {
                let expected = (e.amount > 0)
                    .then(|| balance.checked_add(e.amount))
                    .flatten();
                if expected != Some(e.balance_after) {
                    return Err(format!(
                        "deposit of {} on a balance of {balance} states balance_after {}",
                        e.amount, e.balance_after
                    ));
                }
                Ok(())
            }
            AccountEvent::MoneyWithdrawn(e) => {
                if status != AccountStatus::Open {
                    return Err("withdrawal from a frozen account".into());
                }
                let expected = (e.amount > 0)
                    .then(|| balance.checked_sub(e.amount))
                    .flatten()
                    .filter(|b| *b >= 0);
                if expected != Some(e.balance_after) {
                    return Err(format!(
                        "withdrawal of {} from a balance of {balance} states balance_after {}",
                        e.amount, e.balance_after
                    ));
                }
                Ok(())
            }
            AccountEvent::AccountFrozen(_) if status != AccountStatus::Open => {
                Err("frozen while not open".into())
            }
            AccountEvent::AccountUnfrozen(_) if status != AccountStatus::Frozen => {
                Err("unfrozen while not frozen".into())
            }
            AccountEvent::AccountClosed(_) if balance != 0 => {
                Err(format!("closed with a balance of {balance}"))
            }
            AccountEvent::AccountClosed(_) if !self.state.transfers_in_flight.is_empty() => {
                Err("closed with transfers in flight".into())
            }
            AccountEvent::TransferDebited(e) => {
                if status != AccountStatus::Open {
                    return Err("transfer debited from a frozen account".into());
                }
                if self.state.transfers_in_flight.contains(&e.transfer_id) {
                    return Err(format!("transfer {} debited twice", e.transfer_id));
                }
                let expected = (e.amount > 0)
                    .then(|| balance.checked_sub(e.amount))
                    .flatten()
                    .filter(|b| *b >= 0);
                movement(
                    "transfer debit",
                    e.amount,
                    balance,
                    expected,
                    e.balance_after,
                )
            }
            AccountEvent::TransferCredited(e) => {
                let expected = (e.amount > 0)
                    .then(|| balance.checked_add(e.amount))
                    .flatten();
                movement(
                    "transfer credit",
                    e.amount,
                    balance,
                    expected,
                    e.balance_after,
                )
            }
            AccountEvent::TransferRefunded(e) => {
                if !self.state.transfers_in_flight.contains(&e.transfer_id) {
                    return Err(format!(
                        "refund of transfer {} that was not in flight",
                        e.transfer_id
                    ));
                }
                let expected = (e.amount > 0)
                    .then(|| balance.checked_add(e.amount))
                    .flatten();
                movement(
                    "transfer refund",
                    e.amount,
                    balance,
                    expected,
                    e.balance_after,
                )
            }
            AccountEvent::TransferSettled(e)
                if !self.state.transfers_in_flight.contains(&e.transfer_id) =>
            {
                Err(format!(
                    "settle of transfer {} that was not in flight",
                    e.transfer_id
                ))
            }
            _ => Ok(()),
        }
    }
}

/// A stated `balance_after` must be what the rules give.
fn movement(
    what: &str,
    amount: i64,
    balance: i64,
    expected: Option<i64>,
    stated: i64,
) -> Result<(), String> {
    if expected == Some(stated) {
        return Ok(());
    }
    Err(format!(
        "{what} of {amount} on a balance of {balance} states balance_after {stated}"
    ))
}
