//! Re-derives a transaction or a hold from its stored events with the domain's own `apply`,
//! checking each event could have come from the rules: a transaction is posted once with 1 to
//! 64 well-formed legs; a hold is placed once and ends once, never captured beyond its amount.
//! Whether the accounts agree is checked across aggregates (`transaction_ledger`).

use cqrs_es::{Aggregate, DomainEvent};
use domain::ledger::Hold;
use domain::ledger::{
    HoldEvent, HoldStatus, LEGS_MAX, Leg, SystemAccount, Transaction, TransactionEvent,
};
use domain::{AMOUNT_MAX_MINOR, validate};
use serde::de::DeserializeOwned;

use crate::StoredEvent;
use crate::fold::FoldError;

/// `event`'s payload as an event of type `E`, of the type its row says.
pub fn read<E: DeserializeOwned + DomainEvent>(event: &StoredEvent) -> Result<E, FoldError> {
    let parsed: E = serde::Deserialize::deserialize(&*event.payload)
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

#[derive(Debug, Clone, Default)]
pub struct TransactionFold {
    pub state: Transaction,
    pub version: i64,
}

impl TransactionFold {
    pub fn apply(&mut self, event: &StoredEvent) -> Result<(), FoldError> {
        let parsed = read(event)?;
        self.apply_parsed(&event.aggregate_id, &parsed, event.sequence)
    }

    pub fn apply_parsed(
        &mut self,
        aggregate_id: &str,
        event: &TransactionEvent,
        sequence: i64,
    ) -> Result<(), FoldError> {
        let TransactionEvent::TransactionPosted(posted) = event;
        if self.state.posted() {
            return Err(FoldError::Inconsistent("posted twice".into()));
        }
        if posted.transaction_id.to_string() != aggregate_id {
            return Err(FoldError::Inconsistent(format!(
                "payload is transaction {}",
                posted.transaction_id
            )));
        }
        check_legs(&posted.legs).map_err(FoldError::Inconsistent)?;
        self.state.apply(event.clone());
        self.version = sequence;
        Ok(())
    }
}

/// 1 to 64 legs, each 1..=10^15 in a valid currency between two different accounts, at most
/// one of them a system account, and that one in the leg's currency.
fn check_legs(legs: &[Leg]) -> Result<(), String> {
    if legs.is_empty() || legs.len() > LEGS_MAX {
        return Err(format!("{} legs (1 to {LEGS_MAX} expected)", legs.len()));
    }
    for (index, leg) in legs.iter().enumerate() {
        let bad = |reason: String| format!("leg {index}: {reason}");
        if !(1..=AMOUNT_MAX_MINOR).contains(&leg.amount) {
            return Err(bad(format!("amount {} out of range", leg.amount)));
        }
        validate::currency("currency", &leg.currency).map_err(|e| bad(e.to_string()))?;
        if leg.from == leg.to {
            return Err(bad("from an account to itself".into()));
        }
        let from_system = SystemAccount::is_system_id(&leg.from);
        if from_system && SystemAccount::is_system_id(&leg.to) {
            return Err(bad("between two system accounts".into()));
        }
        for side in [&leg.from, &leg.to] {
            side_in(side, &leg.currency).map_err(bad)?;
        }
    }
    Ok(())
}

/// A client id, or a system account in `currency`.
fn side_in(id: &str, currency: &str) -> Result<(), String> {
    if !SystemAccount::is_system_id(id) {
        return validate::aggregate_id("account_id", id).map_err(|e| format!("{id}: {e}"));
    }
    let system: SystemAccount = id.parse().map_err(|e| format!("{e}"))?;
    if system.currency != currency {
        return Err(format!("{id} in a leg of {currency}"));
    }
    Ok(())
}

#[derive(Debug, Clone, Default)]
pub struct HoldFold {
    pub state: Hold,
    pub version: i64,
}

impl HoldFold {
    pub fn apply(&mut self, event: &StoredEvent) -> Result<(), FoldError> {
        let parsed = read(event)?;
        self.apply_parsed(&event.aggregate_id, &parsed, event.sequence)
    }

    pub fn apply_parsed(
        &mut self,
        aggregate_id: &str,
        event: &HoldEvent,
        sequence: i64,
    ) -> Result<(), FoldError> {
        self.check(aggregate_id, event)
            .map_err(FoldError::Inconsistent)?;
        self.state.apply(event.clone());
        self.version = sequence;
        Ok(())
    }

    fn check(&self, aggregate_id: &str, event: &HoldEvent) -> Result<(), String> {
        let hold = &self.state;
        match (hold.status, event) {
            (HoldStatus::Unplaced, HoldEvent::HoldPlaced(e)) => {
                if e.hold_id.to_string() != aggregate_id {
                    return Err(format!("payload is hold {}", e.hold_id));
                }
                if !(1..=AMOUNT_MAX_MINOR).contains(&e.amount) {
                    return Err(format!("hold of {} out of range", e.amount));
                }
                validate::aggregate_id("account_id", &e.account_id)
                    .and_then(|()| validate::currency("currency", &e.currency))
                    .map_err(|e| e.to_string())
            }
            (HoldStatus::Unplaced, _) => Err("event before the hold was placed".into()),
            (HoldStatus::Held, HoldEvent::HoldPlaced(_)) => Err("placed twice".into()),
            (HoldStatus::Held, HoldEvent::HoldCaptured(e)) => {
                if !(1..=hold.amount).contains(&e.amount) {
                    return Err(format!(
                        "captured {} of a hold of {}",
                        e.amount, hold.amount
                    ));
                }
                if e.released != hold.amount - e.amount {
                    return Err(format!(
                        "captured {} of {} and released {}",
                        e.amount, hold.amount, e.released
                    ));
                }
                if e.to == hold.account_id {
                    return Err("captured to its own account".into());
                }
                side_in(&e.to, &hold.currency)
            }
            (HoldStatus::Held, HoldEvent::HoldExpired(_)) if hold.expires_at.is_none() => {
                Err("expired, but it has no expiry".into())
            }
            (HoldStatus::Held, HoldEvent::HoldVoided(_) | HoldEvent::HoldExpired(_)) => Ok(()),
            (ended, _) => Err(format!("event after the hold ended ({})", ended.as_str())),
        }
    }
}
