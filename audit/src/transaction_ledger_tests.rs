//! The ledger checks over histories the domain itself decided, then over tampered copies.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed expectation should panic

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use cqrs_es::Aggregate;
use domain::account::{
    AccountCommand, AccountServices, Deposit, DepositChannel, FundsReleased, LegsPosted,
    OpenAccount, PostedLeg,
};
use domain::ledger::{
    Book, CaptureHold, Hold, HoldCommand, HoldEvent, Leg, PlaceHold, PostTransaction, Transaction,
    TransactionEvent, VoidHold,
};

use super::*;
use crate::fold::AccountFold;
use crate::ledger_fold::{HoldFold, TransactionFold};
use crate::ledger_totals::CurrencyTotals;

const TX: Uuid = Uuid::from_u128(1);
const CAPTURED: Uuid = Uuid::from_u128(2);
const VOIDED: Uuid = Uuid::from_u128(3);

/// What a store would hold: every aggregate's events in order.
#[derive(Debug, Clone, Default)]
struct Store {
    accounts: BTreeMap<String, Vec<AccountEvent>>,
    transactions: Vec<TransactionEvent>,
    holds: BTreeMap<Uuid, Vec<HoldEvent>>,
}

fn open(book: &mut Book, id: &str, currency: &str, deposit: i64) {
    let admin = AccountServices::default();
    let open = AccountCommand::Open(OpenAccount {
        account_id: id.into(),
        owner: "o".into(),
        currency: currency.into(),
        metadata: BTreeMap::new(),
    });
    book.decide_account(&open, &admin).unwrap();
    if deposit == 0 {
        return;
    }
    let deposit = AccountCommand::Deposit(Deposit {
        account_id: id.into(),
        amount: deposit,
        reference: String::new(),
        channel: DepositChannel::Cash,
    });
    book.decide_account(&deposit, &admin).unwrap();
}

fn hold_decide(book: &mut Book, store: &mut Store, command: HoldCommand) {
    let id = command.hold_id();
    let mut hold = Hold::default();
    for event in store.holds.get(&id).into_iter().flatten() {
        hold.apply(event.clone());
    }
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let events = hold.decide(&command, book, None, now).unwrap();
    store.holds.entry(id).or_default().extend(events);
}

/// A transaction of four legs (a fee and an exchange among them), a hold captured in part, a
/// hold voided.
fn decided() -> Store {
    let mut book = Book::default();
    open(&mut book, "a", "EUR", 1_000);
    open(&mut book, "b", "EUR", 10);
    open(&mut book, "u", "USD", 0);
    let mut store = Store::default();
    let leg = |from: &str, to: &str, amount: i64, currency: &str| Leg {
        from: from.into(),
        to: to.into(),
        amount,
        currency: currency.into(),
    };
    let post = PostTransaction {
        transaction_id: TX,
        legs: vec![
            leg("a", "b", 100, "EUR"),
            leg("a", "@fees:EUR", 1, "EUR"),
            leg("a", "@exchange:EUR", 50, "EUR"),
            leg("@exchange:USD", "u", 54, "USD"),
        ],
        reference: "split".into(),
        metadata: BTreeMap::new(),
    };
    store.transactions = Transaction::default().post(&post, &mut book, None).unwrap();
    for (id, amount) in [(CAPTURED, 300), (VOIDED, 5)] {
        let place = HoldCommand::Place(PlaceHold {
            hold_id: id,
            account_id: "a".into(),
            amount,
            expires_at: None,
            reference: String::new(),
        });
        hold_decide(&mut book, &mut store, place);
    }
    let capture = HoldCommand::Capture(CaptureHold {
        hold_id: CAPTURED,
        amount: Some(120),
        to: "b".into(),
    });
    hold_decide(&mut book, &mut store, capture);
    hold_decide(
        &mut book,
        &mut store,
        HoldCommand::Void(VoidHold { hold_id: VOIDED }),
    );
    store.accounts = book.events().clone();
    store
}

/// Every finding the audit makes on `store`, per aggregate and across them.
fn audit(store: &Store) -> Vec<String> {
    let mut found = Vec::new();
    let mut ledger = TransactionLedger::default();
    let mut totals = CurrencyTotals::default();
    for (id, events) in &store.accounts {
        let mut fold = AccountFold::default();
        let mut broken = false;
        for (n, event) in events.iter().enumerate() {
            // As `chain_check` does: the fold stops at its first finding.
            if !broken && let Err(e) = fold.apply_parsed(event, i64::try_from(n).unwrap() + 1) {
                found.push(format!("account {id}: {}", e.reason()));
                broken = true;
            }
            ledger.observe_account(id, &fold.state.currency, event);
            totals.observe(id, &fold.state.currency, event);
        }
    }
    let mut transaction = TransactionFold::default();
    for event in &store.transactions {
        if let Err(e) = transaction.apply_parsed(&TX.to_string(), event, 1) {
            found.push(format!("transaction: {}", e.reason()));
        }
        ledger.observe_transaction(event);
    }
    for (id, events) in &store.holds {
        let mut fold = HoldFold::default();
        for event in events {
            if let Err(e) = fold.apply_parsed(&id.to_string(), event, 1) {
                found.push(format!("hold {id}: {}", e.reason()));
            }
            ledger.observe_hold(*id, event);
        }
    }
    let across = ledger.findings().into_iter().chain(totals.findings());
    found.extend(across.map(|f| f.to_string()));
    found
}

fn last_legs<'a>(store: &'a mut Store, account: &str, transaction: Uuid) -> &'a mut LegsPosted {
    store
        .accounts
        .get_mut(account)
        .unwrap()
        .iter_mut()
        .rev()
        .find_map(|e| match e {
            AccountEvent::LegsPosted(l) if l.transaction_id == transaction => Some(l),
            _ => None,
        })
        .unwrap()
}

#[test]
fn what_the_domain_decides_passes() {
    assert_eq!(audit(&decided()), Vec::<String>::new());
}

#[test]
fn a_leg_changed_on_one_side_is_found_by_the_ledger_and_the_totals() {
    let mut store = decided();
    let legs = last_legs(&mut store, "b", TX);
    legs.legs[0].amount = 101;
    legs.balance_after += 1;
    let found = audit(&store);
    assert!(
        found
            .iter()
            .any(|f| f.starts_with(&format!("transaction {TX}: its legs give"))),
        "{found:?}"
    );
    assert!(
        found.contains(&"currency EUR sums to 1 over all accounts, not 0".to_owned()),
        "{found:?}"
    );
}

#[test]
fn a_stated_balance_that_does_not_follow_is_found() {
    let mut store = decided();
    last_legs(&mut store, "a", TX).balance_after -= 1;
    let found = audit(&store);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("account a: legs of -151"), "{found:?}");
}

#[test]
fn legs_for_no_transaction_or_a_missing_side_are_found() {
    let mut store = decided();
    // b's side of the transaction vanished: its balance_after chain is kept consistent.
    let b = store.accounts.get_mut("b").unwrap();
    let at = b
        .iter()
        .position(|e| matches!(e, AccountEvent::LegsPosted(l) if l.transaction_id == TX))
        .unwrap();
    b.remove(at);
    let mut balance = 0;
    for event in b.iter_mut() {
        match event {
            AccountEvent::MoneyDeposited(e) => balance = e.balance_after,
            AccountEvent::LegsPosted(e) => {
                balance += e.legs.iter().map(|l| l.amount).sum::<i64>();
                e.balance_after = balance;
            }
            _ => {}
        }
    }
    let found = audit(&store);
    assert!(
        found
            .iter()
            .any(|f| f
                .contains("give 5 account sides moving 305; the accounts recorded 4 moving 205")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("currency EUR sums to -100")),
        "{found:?}"
    );

    let mut store = decided();
    let stray = Uuid::from_u128(99);
    store
        .accounts
        .get_mut("a")
        .unwrap()
        .push(AccountEvent::LegsPosted(LegsPosted {
            transaction_id: stray,
            legs: vec![PostedLeg {
                leg: 0,
                counterparty: "@world:EUR".into(),
                amount: 5,
            }],
            balance_after: 1_000 - 151 - 120 + 5,
            capture: false,
        }));
    let found = audit(&store);
    assert_eq!(
        found,
        [format!(
            "transaction {stray}: legs recorded on accounts for a transaction never posted (nor a hold captured)"
        )]
    );
}

#[test]
fn a_capture_beyond_the_hold_or_a_second_release_is_found() {
    let mut store = decided();
    let Some(HoldEvent::HoldCaptured(captured)) =
        store.holds.get_mut(&CAPTURED).unwrap().last_mut()
    else {
        panic!();
    };
    captured.amount = 301;
    captured.released = -1;
    let found = audit(&store);
    assert!(
        found.contains(&format!("hold {CAPTURED}: captured 301 of a hold of 300")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.starts_with(&format!("transaction {CAPTURED}: "))),
        "{found:?}"
    );

    let mut store = decided();
    store
        .accounts
        .get_mut("a")
        .unwrap()
        .push(AccountEvent::FundsReleased(FundsReleased {
            hold_id: VOIDED,
            amount: 5,
            end: HoldEnd::Voided,
        }));
    let found = audit(&store);
    assert!(
        found.contains(&format!("account a: hold {VOIDED} released twice")),
        "{found:?}"
    );
    assert!(
        found.contains(&format!("hold {VOIDED}: released 2 times")),
        "{found:?}"
    );
}

#[test]
fn a_hold_ended_without_its_release_or_released_otherwise_is_found() {
    let mut store = decided();
    store
        .accounts
        .get_mut("a")
        .unwrap()
        .retain(|e| !matches!(e, AccountEvent::FundsReleased(r) if r.hold_id == VOIDED));
    let found = audit(&store);
    assert!(
        found.contains(&format!("hold {VOIDED}: voided but never released")),
        "{found:?}"
    );

    let mut store = decided();
    for event in store.accounts.get_mut("a").unwrap() {
        if let AccountEvent::FundsReleased(r) = event
            && r.hold_id == VOIDED
        {
            r.end = HoldEnd::Expired;
        }
    }
    let found = audit(&store);
    assert_eq!(
        found,
        [format!(
            "hold {VOIDED}: released 5 on a as expired; the hold of 5 on a was voided"
        )]
    );
}

#[test]
fn limits_are_checked_at_every_event() {
    let mut store = decided();
    // a withdrawal past zero, with its balance stated consistently
    let a = store.accounts.get_mut("a").unwrap();
    let balance = 1_000 - 151 - 120;
    a.push(AccountEvent::MoneyWithdrawn(
        domain::account::MoneyWithdrawn {
            amount: balance + 1,
            reference: String::new(),
            balance_after: -1,
        },
    ));
    let found = audit(&store);
    assert_eq!(
        found,
        ["account a: available balance -1 (balance -1, held 0) is below the overdraft limit of 0"]
    );
}
