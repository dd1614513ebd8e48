//! What the ledger tests share: books of opened accounts, and the double-entry view of what a
//! book recorded.

#![allow(dead_code)] // each test crate uses part of it

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use domain::account::*;
use domain::ledger::postings;
use domain::ledger::{Book, Hold, HoldEvent, Leg, PostTransaction};
use uuid::Uuid;

/// The instant the tests start at; `now` advances from here.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

pub fn open(id: &str, owner: &str, currency: &str) -> AccountCommand {
    AccountCommand::Open(OpenAccount {
        account_id: id.into(),
        owner: owner.into(),
        currency: currency.into(),
        metadata: BTreeMap::new(),
    })
}

pub fn deposit(id: &str, amount: i64) -> AccountCommand {
    AccountCommand::Deposit(Deposit {
        account_id: id.into(),
        amount,
        reference: String::new(),
        channel: DepositChannel::Unspecified,
    })
}

pub fn admin() -> AccountServices {
    AccountServices::default()
}

/// A book of `(id, owner, currency, balance)` accounts, opened and funded by their own
/// commands (so the book's events hold their whole history).
pub fn book_of(accounts: &[(&str, &str, &str, i64)]) -> Book {
    let mut book = Book::default();
    for (id, owner, currency, balance) in accounts {
        book.decide_account(&open(id, owner, currency), &admin())
            .expect("open");
        if *balance > 0 {
            book.decide_account(&deposit(id, *balance), &admin())
                .expect("deposit");
        }
    }
    book
}

pub fn leg(from: &str, to: &str, amount: i64, currency: &str) -> Leg {
    Leg {
        from: from.into(),
        to: to.into(),
        amount,
        currency: currency.into(),
    }
}

pub fn post(id: u128, legs: Vec<Leg>) -> PostTransaction {
    PostTransaction {
        transaction_id: Uuid::from_u128(id),
        legs,
        reference: String::new(),
        metadata: BTreeMap::new(),
    }
}

/// Sum per currency of every posting the book's events stand for, system accounts included.
pub fn currency_sums(book: &Book) -> BTreeMap<String, i128> {
    let mut sums = BTreeMap::new();
    for (id, events) in book.events() {
        let currency = book.account(id).currency;
        for event in events {
            for posting in postings::of_account_event(id, &currency, event) {
                *sums.entry(posting.currency).or_insert(0) += i128::from(posting.amount);
            }
        }
    }
    sums
}

/// Applies hold events as the store's readers do.
pub fn applied(mut hold: Hold, events: &[HoldEvent]) -> Hold {
    use cqrs_es::Aggregate;
    for event in events {
        hold.apply(event.clone());
    }
    hold
}
