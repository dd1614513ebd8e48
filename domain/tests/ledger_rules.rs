//! Each bad input to a transaction: its stable code, and nothing recorded (holds:
//! `ledger_hold_rules.rs`).
//!
//! Unbalanced legs have no test because they cannot be written: a leg is one amount taken from
//! one account and given to another in one currency (`Leg {from, to, amount, currency}`), so
//! every transaction balances per currency by construction. What can go wrong is each leg's
//! sides, amount and currency, which the tests below cover.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed expectation should panic

mod ledger_common;

use domain::ErrorCode;
use domain::account::*;
use domain::ledger::*;
use ledger_common::{admin, book_of, currency_sums, leg, post};
use serde_json::json;

/// alice (owner o1) with 1,000 EUR, bob (o2) with 500 EUR, carol (o1) in USD with 300.
fn book() -> Book {
    book_of(&[
        ("alice", "o1", "EUR", 1_000),
        ("bob", "o2", "EUR", 500),
        ("carol", "o1", "USD", 300),
    ])
}

/// Posts `legs` as `owner`; asserts the refusal's code and that the book is as it was.
fn refused_post(book: &Book, legs: Vec<Leg>, owner: Option<&str>, code: ErrorCode) -> LedgerError {
    let mut after = book.clone();
    let error = Transaction::default()
        .post(&post(1, legs.clone()), &mut after, owner)
        .expect_err(&format!("{legs:?} accepted"));
    assert_eq!(error.code(), code, "{error} ({legs:?})");
    assert_eq!(&after, book, "refused {legs:?} changed the book");
    error
}

#[test]
fn a_balanced_transaction_posts_every_leg_once_and_the_books_balance() {
    let mut book = book();
    let legs = vec![
        leg("alice", "bob", 100, "EUR"),
        leg("alice", "@fees:EUR", 2, "EUR"),
        leg("alice", "@exchange:EUR", 50, "EUR"),
        leg("@exchange:USD", "carol", 55, "USD"),
    ];
    let events = Transaction::default()
        .post(&post(1, legs.clone()), &mut book, None)
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(book.account("alice").balance, 848);
    assert_eq!(book.account("bob").balance, 600);
    assert_eq!(book.account("carol").balance, 355);
    let last = |id: &str| book.events()[id].last().cloned().unwrap();
    let AccountEvent::LegsPosted(alice) = last("alice") else {
        panic!("{:?}", last("alice"));
    };
    assert_eq!(
        alice.legs.len(),
        3,
        "one event per account, every leg on it"
    );
    assert_eq!(alice.balance_after, 848);
    assert!(currency_sums(&book).values().all(|sum| *sum == 0));
}

#[test]
fn an_unknown_or_closed_account_is_refused() {
    let mut book = book();
    book.decide_account(
        &ledger_common::open("dora", "o1", "EUR"),
        &AccountServices::default(),
    )
    .unwrap();
    book.decide_account(
        &AccountCommand::Close(Close {
            account_id: "dora".into(),
        }),
        &admin(),
    )
    .unwrap();
    refused_post(
        &book,
        vec![leg("nobody", "bob", 1, "EUR")],
        None,
        ErrorCode::NotFound,
    );
    refused_post(
        &book,
        vec![leg("alice", "nobody", 1, "EUR")],
        None,
        ErrorCode::NotFound,
    );
    refused_post(
        &book,
        vec![leg("dora", "bob", 1, "EUR")],
        None,
        ErrorCode::AccountClosed,
    );
    // The last leg's account refuses: the legs before it are not recorded either.
    let error = refused_post(
        &book,
        vec![leg("alice", "bob", 1, "EUR"), leg("bob", "dora", 1, "EUR")],
        None,
        ErrorCode::AccountClosed,
    );
    assert_eq!(error.details()["leg"], 1);
    assert_eq!(error.details()["account_id"], "dora");
}

#[test]
fn a_leg_from_an_account_to_itself_is_refused() {
    let error = refused_post(
        &book(),
        vec![leg("alice", "alice", 1, "EUR")],
        None,
        ErrorCode::SchemaViolation,
    );
    assert_eq!(error.details()["field"], "legs[0].to");
    refused_post(
        &book(),
        vec![leg("@world:EUR", "@fees:EUR", 1, "EUR")],
        None,
        ErrorCode::SchemaViolation,
    );
}

#[test]
fn a_currency_that_does_not_match_its_account_is_refused() {
    let error = refused_post(
        &book(),
        vec![leg("alice", "carol", 10, "EUR")],
        None,
        ErrorCode::CurrencyMismatch,
    );
    assert_eq!(
        error.details(),
        json!({"leg": 0, "account_id": "carol", "account_currency": "USD", "leg_currency": "EUR"})
    );
    refused_post(
        &book(),
        vec![leg("alice", "@world:USD", 10, "EUR")],
        None,
        ErrorCode::CurrencyMismatch,
    );
    refused_post(
        &book(),
        vec![leg("alice", "bob", 10, "USD")],
        None,
        ErrorCode::CurrencyMismatch,
    );
}

#[test]
fn more_than_64_legs_are_refused_and_64_are_not() {
    let many = |n: usize| vec![leg("@world:EUR", "alice", 1, "EUR"); n];
    let error = refused_post(
        &book(),
        many(LEGS_MAX + 1),
        None,
        ErrorCode::SchemaViolation,
    );
    assert_eq!(error.details()["field"], "legs");
    refused_post(&book(), Vec::new(), None, ErrorCode::SchemaViolation);
    let mut book = book();
    Transaction::default()
        .post(&post(1, many(LEGS_MAX)), &mut book, None)
        .unwrap();
    assert_eq!(book.account("alice").balance, 1_064);
}

#[test]
fn a_bad_amount_or_a_reused_id_is_refused() {
    for amount in [0, -5, domain::AMOUNT_MAX_MINOR + 1] {
        refused_post(
            &book(),
            vec![leg("alice", "bob", amount, "EUR")],
            None,
            ErrorCode::AmountOutOfRange,
        );
    }
    let mut book = book();
    let command = post(1, vec![leg("alice", "bob", 1, "EUR")]);
    let mut transaction = Transaction::default();
    for event in transaction.post(&command, &mut book, None).unwrap() {
        cqrs_es::Aggregate::apply(&mut transaction, event);
    }
    let before = book.clone();
    let error = transaction.post(&command, &mut book, None).unwrap_err();
    assert_eq!(error.code(), ErrorCode::AlreadyExists);
    assert_eq!(book, before);
}

#[test]
fn limits_are_checked_leg_by_leg_with_their_details() {
    let mut book = book();
    let limits = AccountCommand::SetLimits(SetLimits {
        account_id: "bob".into(),
        overdraft_limit: 100,
        max_balance: Some(700),
        reason: "credit line".into(),
    });
    book.decide_account(&limits, &admin()).unwrap();
    // Down to -100 is allowed; one more is not.
    let error = refused_post(
        &book,
        vec![leg("bob", "alice", 601, "EUR")],
        None,
        ErrorCode::LimitExceeded,
    );
    assert_eq!(
        error.details(),
        json!({"limit": "overdraft_limit", "limit_value": 100, "operation": "leg", "amount": 601,
               "balance": 500, "held": 0, "account_id": "bob", "leg": 0})
    );
    let error = refused_post(
        &book,
        vec![leg("alice", "bob", 201, "EUR")],
        None,
        ErrorCode::LimitExceeded,
    );
    assert_eq!(error.details()["limit"], "max_balance");
    // Without an overdraft, as before limits existed.
    refused_post(
        &book,
        vec![leg("alice", "bob", 1_001, "EUR")],
        None,
        ErrorCode::InsufficientFunds,
    );
    Transaction::default()
        .post(
            &post(2, vec![leg("bob", "alice", 600, "EUR")]),
            &mut book,
            None,
        )
        .unwrap();
    assert_eq!(book.account("bob").available(), -100);
}

#[test]
fn an_owner_bound_sender_cannot_take_from_another_owners_account() {
    // bob is o2's; to o1 his account is one nobody opened.
    let error = refused_post(
        &book(),
        vec![leg("bob", "alice", 1, "EUR")],
        Some("o1"),
        ErrorCode::NotFound,
    );
    assert!(error.refuses_the_sender());
    // Word for word what an account nobody opened answers.
    let without_bob = book_of(&[("alice", "o1", "EUR", 1_000)]);
    let missing = refused_post(
        &without_bob,
        vec![leg("bob", "alice", 1, "EUR")],
        Some("o1"),
        ErrorCode::NotFound,
    );
    assert!(!missing.refuses_the_sender());
    assert_eq!(
        (error.to_string(), error.details()),
        (missing.to_string(), missing.details())
    );
    // Nor mint money into it from a system account.
    let error = refused_post(
        &book(),
        vec![leg("@world:EUR", "bob", 1, "EUR")],
        Some("o1"),
        ErrorCode::NotFound,
    );
    assert!(error.refuses_the_sender());
    // Nor take the operator's money (fees, exchange, transit); only deposit from @world.
    for system in ["@fees:EUR", "@exchange:EUR", "@transit:EUR"] {
        let error = refused_post(
            &book(),
            vec![leg(system, "alice", 1, "EUR")],
            Some("o1"),
            ErrorCode::SchemaViolation,
        );
        assert_eq!(error.details()["field"], "legs[0].from");
    }
    // Paying another owner from one's own account is what a transaction is for.
    let mut book = book();
    Transaction::default()
        .post(
            &post(1, vec![leg("alice", "bob", 1, "EUR")]),
            &mut book,
            Some("o1"),
        )
        .unwrap();
}
