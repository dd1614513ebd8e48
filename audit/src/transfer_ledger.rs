//! The cross-aggregate check of transfers: money a transfer takes from one account must arrive
//! in the other or come back, once, for the amount the transfer was requested with. Each
//! account's own fold cannot see this (it knows one side only). Pure: fed the events of the
//! whole store, it reports contradictions; a transfer still in flight is not one.

use std::collections::BTreeMap;

use domain::account::AccountEvent;
use domain::transfer::TransferEvent;
use serde::Deserialize;
use uuid::Uuid;

use crate::{Finding, StoredEvent};

/// One side of a transfer as an account recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Movement {
    account: String,
    amount: i64,
}

#[derive(Debug, Default)]
struct Seen {
    /// (from, to, amount) as requested.
    requested: Option<(String, String, i64)>,
    settled: Option<&'static str>,
    debits: Vec<Movement>,
    credits: Vec<Movement>,
    refunds: Vec<Movement>,
}

#[derive(Debug, Default)]
pub struct TransferLedger {
    transfers: BTreeMap<Uuid, Seen>,
}

impl TransferLedger {
    /// Takes note of `event` if it is part of a transfer (unreadable events are the per-aggregate
    /// checks' findings, not this one's).
    pub fn observe(&mut self, event: &StoredEvent) {
        match event.aggregate_type.as_str() {
            "account" if event.event_type.starts_with("Transfer") => {
                let Ok(parsed) = AccountEvent::deserialize(&*event.payload) else {
                    return;
                };
                let account = event.aggregate_id.clone();
                let (id, list, amount) = match parsed {
                    AccountEvent::TransferDebited(e) => (e.transfer_id, 0, e.amount),
                    AccountEvent::TransferCredited(e) => (e.transfer_id, 1, e.amount),
                    AccountEvent::TransferRefunded(e) => (e.transfer_id, 2, e.amount),
                    _ => return,
                };
                let seen = self.transfers.entry(id).or_default();
                let list = match list {
                    0 => &mut seen.debits,
                    1 => &mut seen.credits,
                    _ => &mut seen.refunds,
                };
                list.push(Movement { account, amount });
            }
            "transfer" => {
                let (Ok(id), Ok(parsed)) = (
                    Uuid::parse_str(&event.aggregate_id),
                    TransferEvent::deserialize(&*event.payload),
                ) else {
                    return;
                };
                let seen = self.transfers.entry(id).or_default();
                match parsed {
                    TransferEvent::TransferRequested(e) => {
                        seen.requested = Some((e.from, e.to, e.amount));
                    }
                    TransferEvent::TransferCompleted(_) => seen.settled = Some("completed"),
                    TransferEvent::TransferFailed(_) => seen.settled = Some("failed"),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// Every contradiction, one finding per transfer.
    pub fn findings(&self) -> Vec<Finding> {
        self.transfers
            .iter()
            .filter_map(|(id, seen)| {
                check(seen).err().map(|reason| Finding::TransferImbalance {
                    transfer_id: id.to_string(),
                    reason,
                })
            })
            .collect()
    }
}

fn check(seen: &Seen) -> Result<(), String> {
    let Some((from, to, amount)) = &seen.requested else {
        return Err("account movements for a transfer that was never requested".into());
    };
    let expect = |what: &str, list: &[Movement], account: &str| -> Result<bool, String> {
        match list {
            [] => Ok(false),
            [m] if m.account == account && m.amount == *amount => Ok(true),
            [m] => Err(format!(
                "{what} of {} on {} (the transfer is {amount} from {from} to {to})",
                m.amount, m.account
            )),
            more => Err(format!("{} {what}s", more.len())),
        }
    };
    let debited = expect("debit", &seen.debits, from)?;
    let credited = expect("credit", &seen.credits, to)?;
    let refunded = expect("refund", &seen.refunds, from)?;
    if (credited || refunded) && !debited {
        return Err("money arrived that was never debited".into());
    }
    if credited && refunded {
        return Err("both credited and refunded".into());
    }
    match seen.settled {
        Some("completed") if !credited => Err("completed without a credit".into()),
        Some("failed") if debited && !refunded => Err("failed without refunding its debit".into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(debits: &[(&str, i64)], credits: &[(&str, i64)], refunds: &[(&str, i64)]) -> Seen {
        let list = |items: &[(&str, i64)]| {
            items
                .iter()
                .map(|(a, n)| Movement {
                    account: (*a).into(),
                    amount: *n,
                })
                .collect()
        };
        Seen {
            requested: Some(("a".into(), "b".into(), 10)),
            settled: None,
            debits: list(debits),
            credits: list(credits),
            refunds: list(refunds),
        }
    }

    #[test]
    fn balanced_and_in_flight_transfers_pass() {
        assert_eq!(check(&seen(&[("a", 10)], &[("b", 10)], &[])), Ok(()));
        assert_eq!(check(&seen(&[("a", 10)], &[], &[("a", 10)])), Ok(()));
        assert_eq!(check(&seen(&[("a", 10)], &[], &[])), Ok(()), "in flight");
        assert_eq!(check(&seen(&[], &[], &[])), Ok(()), "not debited yet");
    }

    #[test]
    fn minted_doubled_or_diverted_money_is_found() {
        assert!(
            check(&seen(&[], &[("b", 10)], &[])).is_err(),
            "credit without debit"
        );
        assert!(check(&seen(&[("a", 10)], &[("b", 10)], &[("a", 10)])).is_err());
        assert!(
            check(&seen(&[("a", 10)], &[("b", 11)], &[])).is_err(),
            "amount"
        );
        assert!(
            check(&seen(&[("a", 10)], &[("c", 10)], &[])).is_err(),
            "account"
        );
        assert!(
            check(&seen(&[("a", 10), ("a", 10)], &[], &[])).is_err(),
            "twice"
        );
        let mut done = seen(&[("a", 10)], &[], &[]);
        done.settled = Some("completed");
        assert!(check(&done).is_err());
        done.settled = Some("failed");
        assert!(check(&done).is_err());
        let mut orphan = seen(&[("a", 10)], &[], &[]);
        orphan.requested = None;
        assert!(check(&orphan).is_err());
    }
}
