//! Double entry, checked: every account event read as its postings (`domain::ledger::postings`,
//! the reading every reader shares), summed per currency over client accounts and, from the
//! client side of each movement, over the system accounts. Each currency must sum to zero.
//! Memory: a few numbers per currency and system account.

use std::collections::BTreeMap;

use domain::AMOUNT_MAX_MINOR;
use domain::account::AccountEvent;
use domain::ledger::postings;
use serde::Serialize;

use crate::Finding;

/// One currency's books: what the client accounts hold, what each system account holds, and
/// their sum, which is zero when the books balance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CurrencyBalance {
    pub currency: String,
    /// Minor units over every client account.
    pub clients: i128,
    /// Minor units per system account (`@world:EUR`, ...).
    pub system: BTreeMap<String, i128>,
    /// `clients` plus every system account.
    pub sum: i128,
}

impl std::fmt::Display for CurrencyBalance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: clients {}", self.currency, self.clients)?;
        for (account, balance) in &self.system {
            write!(f, ", {account} {balance}")?;
        }
        write!(f, "; sum {}", self.sum)
    }
}

#[derive(Debug, Default)]
struct Totals {
    clients: i128,
    system: BTreeMap<String, i128>,
}

#[derive(Debug, Default)]
pub struct CurrencyTotals {
    currencies: BTreeMap<String, Totals>,
}

impl CurrencyTotals {
    /// Adds the postings of `event` on client account `account_id`, held in `currency`. An
    /// event whose amounts are out of range is the fold's finding and is left out, so one bad
    /// row is not also reported as a whole currency's imbalance (nor overflows the sums).
    pub fn observe(&mut self, account_id: &str, currency: &str, event: &AccountEvent) {
        if currency.is_empty() || !amounts_in_range(event) {
            return;
        }
        for posting in postings::of_account_event(account_id, currency, event) {
            let totals = self.currencies.entry(posting.currency).or_default();
            let amount = i128::from(posting.amount);
            if posting.account == account_id {
                totals.clients += amount;
            } else {
                *totals.system.entry(posting.account).or_default() += amount;
            }
        }
    }

    pub fn balances(&self) -> Vec<CurrencyBalance> {
        self.currencies
            .iter()
            .map(|(currency, totals)| CurrencyBalance {
                currency: currency.clone(),
                clients: totals.clients,
                system: totals.system.clone(),
                sum: totals.clients + totals.system.values().sum::<i128>(),
            })
            .collect()
    }

    pub fn findings(&self) -> Vec<Finding> {
        self.balances()
            .into_iter()
            .filter(|b| b.sum != 0)
            .map(|b| Finding::CurrencyImbalance {
                currency: b.currency,
                sum: b.sum,
            })
            .collect()
    }
}

/// Every amount the event moves is within 1..=10^15 (legs: in either direction).
pub fn amounts_in_range(event: &AccountEvent) -> bool {
    let ok = |amount: i64| (1..=AMOUNT_MAX_MINOR).contains(&amount);
    match event {
        AccountEvent::MoneyDeposited(e) => ok(e.amount),
        AccountEvent::MoneyWithdrawn(e) => ok(e.amount),
        AccountEvent::TransferDebited(e) => ok(e.amount),
        AccountEvent::TransferCredited(e) => ok(e.amount),
        AccountEvent::TransferRefunded(e) => ok(e.amount),
        AccountEvent::LegsPosted(e) => {
            e.legs.len() <= domain::ledger::LEGS_MAX
                && e.legs
                    .iter()
                    .all(|leg| ok(leg.amount.checked_abs().unwrap_or(i64::MAX)))
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use domain::account::{LegsPosted, MoneyDeposited, PostedLeg};
    use uuid::Uuid;

    use super::*;

    fn deposit(amount: i64) -> AccountEvent {
        AccountEvent::MoneyDeposited(MoneyDeposited {
            amount,
            reference: String::new(),
            balance_after: amount,
            channel: Default::default(),
        })
    }

    fn legs(legs: &[(&str, i64)]) -> AccountEvent {
        AccountEvent::LegsPosted(LegsPosted {
            transaction_id: Uuid::nil(),
            legs: legs
                .iter()
                .enumerate()
                .map(|(i, (counterparty, amount))| PostedLeg {
                    leg: u16::try_from(i).unwrap_or(u16::MAX),
                    counterparty: (*counterparty).into(),
                    amount: *amount,
                })
                .collect(),
            balance_after: 0,
            capture: false,
        })
    }

    #[test]
    fn both_sides_recorded_balance_and_one_side_does_not() {
        let mut totals = CurrencyTotals::default();
        totals.observe("a", "EUR", &deposit(100));
        totals.observe("a", "EUR", &legs(&[("b", -30), ("@fees:EUR", -1)]));
        totals.observe("b", "EUR", &legs(&[("a", 30)]));
        totals.observe("u", "USD", &deposit(5));
        assert_eq!(totals.findings(), []);
        let eur = &totals.balances()[0];
        assert_eq!((eur.clients, eur.sum), (99, 0));
        assert_eq!(eur.system["@world:EUR"], -100);
        assert_eq!(eur.system["@fees:EUR"], 1);
        assert_eq!(
            eur.to_string(),
            "EUR: clients 99, @fees:EUR 1, @world:EUR -100; sum 0"
        );

        // Money that arrived on b from a, without a's side.
        totals.observe("b", "EUR", &legs(&[("a", 7)]));
        assert_eq!(
            totals.findings(),
            [Finding::CurrencyImbalance {
                currency: "EUR".into(),
                sum: 7
            }]
        );
    }

    #[test]
    fn amounts_out_of_range_are_left_to_the_fold() {
        let mut totals = CurrencyTotals::default();
        totals.observe("a", "EUR", &deposit(i64::MIN));
        totals.observe("a", "EUR", &legs(&[("b", i64::MIN)]));
        totals.observe("a", "", &deposit(1));
        assert_eq!(totals.balances(), []);
    }
}
