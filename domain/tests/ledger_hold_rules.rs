//! Each bad input to a hold (place, capture, void, expire): its stable code, and nothing
//! recorded; and what a good capture records.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed expectation should panic

mod ledger_common;

use chrono::Duration;
use domain::ErrorCode;
use domain::account::*;
use domain::ledger::*;
use ledger_common::{admin, applied, book_of, currency_sums, t0};
use serde_json::json;
use uuid::Uuid;

const HOLD: Uuid = Uuid::from_u128(900);

/// alice (owner o1) with 1,000 EUR, bob (o2) with 500 EUR, carol (o1) in USD with 300.
fn book() -> Book {
    book_of(&[
        ("alice", "o1", "EUR", 1_000),
        ("bob", "o2", "EUR", 500),
        ("carol", "o1", "USD", 300),
    ])
}

/// Places a hold of 400 on alice (expiring at t0 + 60 s).
fn held() -> (Book, Hold) {
    let mut book = book();
    let place = HoldCommand::Place(PlaceHold {
        hold_id: HOLD,
        account_id: "alice".into(),
        amount: 400,
        expires_at: Some(t0() + Duration::seconds(60)),
        reference: "card".into(),
    });
    let events = Hold::default()
        .decide(&place, &mut book, Some("o1"), t0())
        .unwrap();
    assert_eq!(book.account("alice").held, 400);
    assert_eq!(book.account("alice").available(), 600);
    (book, applied(Hold::default(), &events))
}

fn capture(amount: Option<i64>, to: &str) -> HoldCommand {
    HoldCommand::Capture(CaptureHold {
        hold_id: HOLD,
        amount,
        to: to.into(),
    })
}

fn void() -> HoldCommand {
    HoldCommand::Void(VoidHold { hold_id: HOLD })
}

/// Decides `command` at `at` seconds after t0; asserts the refusal's code and an unchanged book.
fn refused_hold(
    book: &Book,
    hold: &Hold,
    command: HoldCommand,
    at: i64,
    code: ErrorCode,
) -> LedgerError {
    let mut after = book.clone();
    let error = hold
        .decide(&command, &mut after, None, t0() + Duration::seconds(at))
        .expect_err(&format!("{command:?} accepted"));
    assert_eq!(error.code(), code, "{error}");
    assert_eq!(&after, book, "refused {command:?} changed the book");
    error
}

#[test]
fn a_partial_capture_posts_that_much_and_releases_the_rest() {
    let (mut book, hold) = held();
    let events = hold
        .decide(&capture(Some(150), "bob"), &mut book, Some("o1"), t0())
        .unwrap();
    let hold = applied(hold, &events);
    assert_eq!((hold.status, hold.captured), (HoldStatus::Captured, 150));
    assert_eq!(
        (book.account("alice").balance, book.account("alice").held),
        (850, 0)
    );
    assert_eq!(book.account("bob").balance, 650);
    let released: Vec<_> = book.events()["alice"]
        .iter()
        .filter(|e| matches!(e, AccountEvent::FundsReleased(r) if r.hold_id == HOLD && r.amount == 400 && r.end == HoldEnd::Captured))
        .collect();
    assert_eq!(released.len(), 1);
    assert!(currency_sums(&book).values().all(|sum| *sum == 0));
}

#[test]
fn a_capture_above_the_amount_held_is_refused() {
    let (book, hold) = held();
    let error = refused_hold(
        &book,
        &hold,
        capture(Some(401), "bob"),
        0,
        ErrorCode::AmountOutOfRange,
    );
    assert_eq!(error.details(), json!({"held": 400, "requested": 401}));
}

#[test]
fn a_capture_after_expiry_is_refused() {
    let (book, hold) = held();
    // Lapsed, not yet released by the worker.
    let error = refused_hold(&book, &hold, capture(None, "bob"), 60, ErrorCode::HoldEnded);
    assert_eq!(error.details(), json!({"status": "expired"}));
    // Released by the worker, once.
    let expire = HoldCommand::Expire(VoidHold { hold_id: HOLD });
    refused_hold(&book, &hold, expire.clone(), 59, ErrorCode::Conflict);
    let mut after = book.clone();
    let events = hold
        .decide(&expire, &mut after, None, t0() + Duration::seconds(61))
        .unwrap();
    let expired = applied(hold, &events);
    assert_eq!(after.account("alice").held, 0);
    let error = refused_hold(
        &after,
        &expired,
        capture(None, "bob"),
        61,
        ErrorCode::HoldEnded,
    );
    assert_eq!(error.details(), json!({"status": "expired"}));
    refused_hold(&after, &expired, expire, 62, ErrorCode::HoldEnded);
}

#[test]
fn a_capture_or_void_after_void_is_refused() {
    let (mut book, hold) = held();
    let events = hold.decide(&void(), &mut book, Some("o1"), t0()).unwrap();
    let voided = applied(hold, &events);
    assert_eq!(book.account("alice").available(), 1_000);
    let error = refused_hold(
        &book,
        &voided,
        capture(Some(1), "bob"),
        0,
        ErrorCode::HoldEnded,
    );
    assert_eq!(error.details(), json!({"status": "voided"}));
    refused_hold(&book, &voided, void(), 0, ErrorCode::HoldEnded);
}

#[test]
fn a_capture_to_the_holds_account_or_in_another_currency_is_refused() {
    let (book, hold) = held();
    refused_hold(
        &book,
        &hold,
        capture(None, "alice"),
        0,
        ErrorCode::SchemaViolation,
    );
    refused_hold(
        &book,
        &hold,
        capture(None, "carol"),
        0,
        ErrorCode::CurrencyMismatch,
    );
    refused_hold(
        &book,
        &hold,
        capture(None, "@world:USD"),
        0,
        ErrorCode::CurrencyMismatch,
    );
    refused_hold(
        &book,
        &hold,
        capture(Some(0), "bob"),
        0,
        ErrorCode::AmountOutOfRange,
    );
    let unplaced = Hold::default();
    refused_hold(
        &book,
        &unplaced,
        capture(None, "bob"),
        0,
        ErrorCode::NotFound,
    );
}

#[test]
fn a_hold_needs_the_available_funds_and_an_owner_bound_sender_its_own_account() {
    let (book, hold) = held();
    let place = |hold_id: u128, account_id: &str, amount: i64| {
        HoldCommand::Place(PlaceHold {
            hold_id: Uuid::from_u128(hold_id),
            account_id: account_id.into(),
            amount,
            expires_at: None,
            reference: String::new(),
        })
    };
    // 600 are available of alice's 1,000.
    refused_hold(
        &book,
        &Hold::default(),
        place(1, "alice", 601),
        0,
        ErrorCode::InsufficientFunds,
    );
    refused_hold(
        &book,
        &hold,
        place(900, "alice", 1),
        0,
        ErrorCode::AlreadyExists,
    );
    let mut after = book.clone();
    let error = Hold::default()
        .decide(&place(2, "bob", 1), &mut after, Some("o1"), t0())
        .unwrap_err();
    assert!(
        error.refuses_the_sender() && error.code() == ErrorCode::NotFound,
        "{error}"
    );
    assert_eq!(after, book);
    // Another owner's hold cannot be captured or voided either.
    let error = hold
        .decide(&void(), &mut after, Some("o2"), t0())
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::NotFound);
    assert_eq!(after, book);
    // Withdrawals see the available balance, not the posted one.
    let withdraw = AccountCommand::Withdraw(Withdraw {
        account_id: "alice".into(),
        amount: 601,
        reference: String::new(),
    });
    let error = after.decide_account(&withdraw, &admin()).unwrap_err();
    assert_eq!(error.code(), ErrorCode::InsufficientFunds);
    assert_eq!(after, book);
}

/// To a sender bound to another owner, a hold is one nobody placed: the same code, message
/// and details, so neither the hold nor the account it is on shows.
#[test]
fn another_owners_hold_answers_as_a_hold_nobody_placed() {
    let (book, hold) = held();
    for command in [void(), capture(None, "bob")] {
        let mut after = book.clone();
        let theirs = hold
            .decide(&command, &mut after, Some("o2"), t0())
            .unwrap_err();
        let nobodys = Hold::default()
            .decide(&command, &mut after, Some("o2"), t0())
            .unwrap_err();
        assert_eq!(after, book);
        assert!(theirs.refuses_the_sender(), "{theirs:?}");
        assert_eq!(
            (theirs.code(), theirs.to_string(), theirs.details()),
            (nobodys.code(), nobodys.to_string(), nobodys.details()),
            "{command:?}"
        );
    }
}
