//! Every account event read as the postings it stands for: the double-entry view of the
//! history, old events included (a deposit recorded before system accounts existed reads as a
//! movement from `@world`). Nothing is rewritten: this is how every reader sees them.
//!
//! Stored amounts are read with saturating arithmetic: a corrupt row yields a wrong figure
//! that `audit verify` reports, never a panic.
//!
//! A client account's postings come from its own events; a system account's come from the
//! client side of each movement (a system account has no events), so the sum over all
//! accounts of one currency is zero exactly when every movement's client sides agree.

use super::system::{SystemAccount, SystemPurpose};
use crate::account::AccountEvent;

/// `amount` (signed: positive is money in) on `account` in `currency`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    pub account: String,
    pub currency: String,
    pub amount: i64,
}

/// The postings of `event` on client account `account_id` (held in `currency`).
pub fn of_account_event(account_id: &str, currency: &str, event: &AccountEvent) -> Vec<Posting> {
    let own = |amount: i64| Posting {
        account: account_id.to_owned(),
        currency: currency.to_owned(),
        amount,
    };
    let system = |purpose: SystemPurpose, amount: i64| Posting {
        account: SystemAccount::new(purpose, currency).to_string(),
        currency: currency.to_owned(),
        amount,
    };
    match event {
        AccountEvent::MoneyDeposited(e) => {
            vec![
                own(e.amount),
                system(SystemPurpose::World, e.amount.saturating_neg()),
            ]
        }
        AccountEvent::MoneyWithdrawn(e) => {
            vec![
                own(e.amount.saturating_neg()),
                system(SystemPurpose::World, e.amount),
            ]
        }
        // Between a transfer's debit and its credit (or refund) the money is in transit; a
        // transfer settled at once passes through it within one write.
        AccountEvent::TransferDebited(e) => {
            vec![
                own(e.amount.saturating_neg()),
                system(SystemPurpose::Transit, e.amount),
            ]
        }
        AccountEvent::TransferCredited(e) => {
            vec![
                own(e.amount),
                system(SystemPurpose::Transit, e.amount.saturating_neg()),
            ]
        }
        AccountEvent::TransferRefunded(e) => {
            vec![
                own(e.amount),
                system(SystemPurpose::Transit, e.amount.saturating_neg()),
            ]
        }
        AccountEvent::LegsPosted(e) => e
            .legs
            .iter()
            .flat_map(|leg| {
                let mut postings = vec![own(leg.amount)];
                if SystemAccount::is_system_id(&leg.counterparty) {
                    postings.push(Posting {
                        account: leg.counterparty.clone(),
                        currency: currency.to_owned(),
                        amount: leg.amount.saturating_neg(),
                    });
                }
                postings
            })
            .collect(),
        AccountEvent::AccountOpened(_)
        | AccountEvent::AccountFrozen(_)
        | AccountEvent::AccountUnfrozen(_)
        | AccountEvent::AccountClosed(_)
        | AccountEvent::TransferSettled(_)
        | AccountEvent::FundsHeld(_)
        | AccountEvent::FundsReleased(_)
        | AccountEvent::LimitsSet(_) => Vec::new(),
    }
}

/// The change in the account's own balance that `event` states, for checking `balance_after`.
pub fn own_change(event: &AccountEvent) -> i64 {
    of_account_event("", "", event)
        .iter()
        .filter(|p| p.account.is_empty())
        .fold(0i64, |sum, p| sum.saturating_add(p.amount))
}
