//! The cross-aggregate check of multi-leg transactions and holds, which no single aggregate's
//! fold can see:
//! - each `TransactionPosted` leg (and each captured hold's posting) must appear on its client
//!   accounts' `LegsPosted`, with that transaction id, leg, counterparty, signed amount and
//!   currency, once; nothing else may;
//! - each hold's funds are reserved once (`FundsHeld`) on its account for its amount, and
//!   released once (`FundsReleased`) exactly when, and as, the hold ended.
//!
//! Pure. Memory per transaction is a few numbers (the leg sides are compared as a multiset
//! hash, not kept); per hold, its account and amount.

use std::collections::BTreeMap;

use domain::account::{AccountEvent, HoldEnd};
use domain::ledger::{HoldEvent, SystemAccount, TransactionEvent};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::Finding;

/// One account's side of one leg.
struct Side<'a> {
    account: &'a str,
    leg: u16,
    counterparty: &'a str,
    /// Signed: positive is money into `account`.
    amount: i64,
    currency: &'a str,
}

/// A multiset of sides: the sum of their hashes (128 bits, so no set of forged sides can be
/// made to match another's by chance), their count, and the money they move.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Sides {
    hash: u128,
    count: u64,
    moved: i128,
}

impl Sides {
    fn add(&mut self, side: &Side<'_>) {
        let mut hasher = Sha256::new();
        for text in [side.account, side.counterparty, side.currency] {
            hasher.update((text.len() as u64).to_be_bytes());
            hasher.update(text.as_bytes());
        }
        hasher.update(side.leg.to_be_bytes());
        hasher.update(side.amount.to_be_bytes());
        let digest = hasher.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        self.hash = self.hash.wrapping_add(u128::from_be_bytes(first));
        self.count += 1;
        self.moved += i128::from(side.amount).abs();
    }
}

#[derive(Debug, Default)]
struct Posting {
    /// From the transaction's legs and from a hold's capture (a hold's id is its capture's
    /// transaction id).
    expected: Sides,
    /// From the accounts' `LegsPosted`.
    recorded: Sides,
    posted: bool,
    captured: bool,
}

#[derive(Debug, Default)]
struct HoldSeen {
    /// (account, amount, currency) as placed.
    placed: Option<(String, i64, String)>,
    end: Option<HoldEnd>,
    held: Vec<(String, i64)>,
    released: Vec<(String, i64, HoldEnd)>,
}

#[derive(Debug, Default)]
pub struct TransactionLedger {
    postings: BTreeMap<Uuid, Posting>,
    holds: BTreeMap<Uuid, HoldSeen>,
}

impl TransactionLedger {
    /// An event of client account `account_id`, held in `currency`.
    pub fn observe_account(&mut self, account_id: &str, currency: &str, event: &AccountEvent) {
        match event {
            AccountEvent::LegsPosted(e) => {
                let posting = self.postings.entry(e.transaction_id).or_default();
                for leg in &e.legs {
                    posting.recorded.add(&Side {
                        account: account_id,
                        leg: leg.leg,
                        counterparty: &leg.counterparty,
                        amount: leg.amount,
                        currency,
                    });
                }
            }
            AccountEvent::FundsHeld(e) => {
                let hold = self.holds.entry(e.hold_id).or_default();
                hold.held.push((account_id.to_owned(), e.amount));
            }
            AccountEvent::FundsReleased(e) => {
                let hold = self.holds.entry(e.hold_id).or_default();
                hold.released.push((account_id.to_owned(), e.amount, e.end));
            }
            _ => {}
        }
    }

    pub fn observe_transaction(&mut self, event: &TransactionEvent) {
        let TransactionEvent::TransactionPosted(e) = event;
        let posting = self.postings.entry(e.transaction_id).or_default();
        posting.posted = true;
        for (index, leg) in e.legs.iter().enumerate() {
            // Legs past the 64th are the fold's finding; they cannot match any recorded leg.
            let leg_number = u16::try_from(index).unwrap_or(u16::MAX);
            add_leg(
                &mut posting.expected,
                leg_number,
                (&leg.from, &leg.to),
                leg.amount,
                &leg.currency,
            );
        }
    }

    /// An event of the hold `hold_id`.
    pub fn observe_hold(&mut self, hold_id: Uuid, event: &HoldEvent) {
        let hold = self.holds.entry(hold_id).or_default();
        match event {
            HoldEvent::HoldPlaced(e) => {
                hold.placed = Some((e.account_id.clone(), e.amount, e.currency.clone()));
            }
            HoldEvent::HoldCaptured(e) => {
                hold.end = Some(HoldEnd::Captured);
                let Some((account, _, currency)) = &hold.placed else {
                    return; // the hold's fold reports an end before a placement
                };
                let posting = self.postings.entry(hold_id).or_default();
                posting.captured = true;
                add_leg(
                    &mut posting.expected,
                    0,
                    (account, &e.to),
                    e.amount,
                    currency,
                );
            }
            HoldEvent::HoldVoided(_) => hold.end = Some(HoldEnd::Voided),
            HoldEvent::HoldExpired(_) => hold.end = Some(HoldEnd::Expired),
        }
    }

    /// Every contradiction: one finding per transaction and per hold.
    pub fn findings(&self) -> Vec<Finding> {
        let transactions = self.postings.iter().filter_map(|(id, posting)| {
            check_posting(posting)
                .err()
                .map(|reason| Finding::TransactionImbalance {
                    transaction_id: id.to_string(),
                    reason,
                })
        });
        let holds = self.holds.iter().filter_map(|(id, hold)| {
            check_hold(hold).err().map(|reason| Finding::HoldMismatch {
                hold_id: id.to_string(),
                reason,
            })
        });
        transactions.chain(holds).collect()
    }
}

/// The client sides of a leg of `amount` from `from` to `to`.
fn add_leg(sides: &mut Sides, leg: u16, (from, to): (&str, &str), amount: i64, currency: &str) {
    if !SystemAccount::is_system_id(from) {
        sides.add(&Side {
            account: from,
            leg,
            counterparty: to,
            amount: amount.saturating_neg(),
            currency,
        });
    }
    if !SystemAccount::is_system_id(to) {
        sides.add(&Side {
            account: to,
            leg,
            counterparty: from,
            amount,
            currency,
        });
    }
}

fn check_posting(posting: &Posting) -> Result<(), String> {
    if !posting.posted && !posting.captured {
        return Err(
            "legs recorded on accounts for a transaction never posted (nor a hold captured)".into(),
        );
    }
    if posting.expected == posting.recorded {
        return Ok(());
    }
    Err(format!(
        "its legs give {} account sides moving {}; the accounts recorded {} moving {}",
        posting.expected.count,
        posting.expected.moved,
        posting.recorded.count,
        posting.recorded.moved
    ))
}

fn end_name(end: HoldEnd) -> &'static str {
    match end {
        HoldEnd::Captured => "captured",
        HoldEnd::Voided => "voided",
        HoldEnd::Expired => "expired",
    }
}

fn check_hold(hold: &HoldSeen) -> Result<(), String> {
    let Some((account, amount, _)) = &hold.placed else {
        return Err("funds reserved or released for a hold never placed".into());
    };
    match hold.held.as_slice() {
        [(on, held)] if on == account && held == amount => {}
        [] => return Err(format!("placed, but nothing was reserved on {account}")),
        [(on, held)] => {
            return Err(format!(
                "reserved {held} on {on}; the hold is {amount} on {account}"
            ));
        }
        more => return Err(format!("reserved {} times", more.len())),
    }
    match (hold.end, hold.released.as_slice()) {
        (None, []) => Ok(()),
        (Some(end), []) => Err(format!("{} but never released", end_name(end))),
        (None, [_]) => Err("released while the hold is still held".into()),
        (Some(end), [(on, released, how)])
            if on == account && released == amount && *how == end =>
        {
            Ok(())
        }
        (Some(end), [(on, released, how)]) => Err(format!(
            "released {released} on {on} as {}; the hold of {amount} on {account} was {}",
            end_name(*how),
            end_name(end)
        )),
        (_, more) => Err(format!("released {} times", more.len())),
    }
}

#[cfg(test)]
#[path = "transaction_ledger_tests.rs"]
mod tests;
