//! The Account side of a transfer: debit, credit, refund and settle take their amount from the
//! transfer, happen only when the transfer calls for them, and repeat as no-ops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cqrs_es::Aggregate;
use domain::ErrorCode;
use domain::account::*;
use domain::transfer::{Transfer, TransferStatus};
use uuid::Uuid;

const T: Uuid = Uuid::from_u128(42);

fn account(id: &str, balance: i64) -> Account {
    let mut account = Account::default();
    account.apply(AccountEvent::AccountOpened(AccountOpened {
        account_id: id.into(),
        owner: "o".into(),
        currency: "EUR".into(),
        metadata: Default::default(),
    }));
    if balance > 0 {
        account.apply(AccountEvent::MoneyDeposited(MoneyDeposited {
            amount: balance,
            reference: String::new(),
            balance_after: balance,
            channel: DepositChannel::Unspecified,
        }));
    }
    account
}

fn transfer(status: TransferStatus, amount: i64) -> AccountServices {
    AccountServices {
        transfer: Some(Transfer {
            id: Some(T),
            from: "src".into(),
            to: "dst".into(),
            amount,
            currency: "EUR".into(),
            status,
            ..Transfer::default()
        }),
        owner: None,
    }
}

fn step(id: &str) -> TransferStep {
    TransferStep {
        account_id: id.into(),
        transfer_id: T,
    }
}

fn after(mut account: Account, events: Vec<AccountEvent>) -> Account {
    for e in events {
        account.apply(e);
    }
    account
}

fn code(result: Result<Vec<AccountEvent>, AccountError>) -> ErrorCode {
    result.unwrap_err().code()
}

#[test]
fn a_debit_takes_the_transfers_amount_and_holds_the_account_open() {
    let src = account("src", 100);
    let events = src
        .decide_with(
            &AccountCommand::Debit(step("src")),
            &transfer(TransferStatus::Requested, 60),
        )
        .unwrap();
    assert_eq!(
        events,
        vec![AccountEvent::TransferDebited(TransferDebited {
            transfer_id: T,
            to: "dst".into(),
            amount: 60,
            balance_after: 40,
            settled: false,
        })]
    );
    let src = after(src, events);
    assert!(
        src.decide_with(
            &AccountCommand::Debit(step("src")),
            &transfer(TransferStatus::Requested, 60)
        )
        .unwrap()
        .is_empty(),
        "a repeated debit changes nothing"
    );
    // Withdraw to zero: the balance allows a close, the transfer in flight does not.
    let src = after(
        src.clone(),
        src.decide(&AccountCommand::Withdraw(Withdraw {
            account_id: "src".into(),
            amount: 40,
            reference: String::new(),
        }))
        .unwrap(),
    );
    let close = AccountCommand::Close(Close {
        account_id: "src".into(),
    });
    assert_eq!(
        src.decide(&close).unwrap_err(),
        AccountError::TransfersInFlight { count: 1 }
    );
    let settle = AccountCommand::Settle(step("src"));
    let settled = after(
        src.clone(),
        src.decide_with(&settle, &transfer(TransferStatus::Credited, 60))
            .unwrap(),
    );
    assert!(settled.transfers_in_flight.is_empty());
    assert!(
        settled
            .decide_with(&settle, &transfer(TransferStatus::Credited, 60))
            .unwrap()
            .is_empty()
    );
    assert_eq!(settled.decide(&close).unwrap().len(), 1);
}

#[test]
fn a_debit_is_refused_like_a_withdrawal() {
    let debit = AccountCommand::Debit(step("src"));
    let requested = transfer(TransferStatus::Requested, 60);
    assert_eq!(
        code(account("src", 59).decide_with(&debit, &requested)),
        ErrorCode::InsufficientFunds
    );
    let mut frozen = account("src", 100);
    frozen.apply(AccountEvent::AccountFrozen(AccountFrozen {
        reason: "hold".into(),
    }));
    assert_eq!(
        code(frozen.decide_with(&debit, &requested)),
        ErrorCode::AccountFrozen
    );
}

#[test]
fn steps_the_transfer_does_not_call_for_are_refused() {
    let src = account("src", 100);
    let dst = account("dst", 0);
    // No transfer: nothing to take the amount from.
    assert_eq!(
        code(src.decide(&AccountCommand::Debit(step("src")))),
        ErrorCode::NotFound
    );
    // Wrong state: a credit before the debit, a debit after it, a refund without a refusal.
    assert_eq!(
        code(dst.decide_with(
            &AccountCommand::Credit(step("dst")),
            &transfer(TransferStatus::Requested, 5)
        )),
        ErrorCode::Conflict
    );
    assert_eq!(
        code(src.decide_with(
            &AccountCommand::Debit(step("src")),
            &transfer(TransferStatus::Debited, 5)
        )),
        ErrorCode::Conflict
    );
    // Wrong account: the destination cannot be debited, the source cannot be credited.
    assert_eq!(
        code(dst.decide_with(
            &AccountCommand::Debit(step("dst")),
            &transfer(TransferStatus::Requested, 5)
        )),
        ErrorCode::Conflict
    );
    assert_eq!(
        code(src.decide_with(
            &AccountCommand::Credit(step("src")),
            &transfer(TransferStatus::Debited, 5)
        )),
        ErrorCode::Conflict
    );
}

#[test]
fn a_credit_to_a_closed_account_is_refused_and_the_source_is_refunded() {
    let mut dst = account("dst", 0);
    dst.apply(AccountEvent::AccountClosed(AccountClosed {}));
    assert_eq!(
        code(dst.decide_with(
            &AccountCommand::Credit(step("dst")),
            &transfer(TransferStatus::Debited, 60)
        )),
        ErrorCode::AccountClosed
    );
    let src = account("src", 100);
    let src = after(
        src.clone(),
        src.decide_with(
            &AccountCommand::Debit(step("src")),
            &transfer(TransferStatus::Requested, 60),
        )
        .unwrap(),
    );
    let refund = AccountCommand::Refund(step("src"));
    assert_eq!(
        code(src.decide_with(&refund, &transfer(TransferStatus::Debited, 60))),
        ErrorCode::Conflict,
        "no refund before the credit was refused"
    );
    let events = src
        .decide_with(&refund, &transfer(TransferStatus::Refunding, 60))
        .unwrap();
    assert_eq!(
        events,
        vec![AccountEvent::TransferRefunded(TransferRefunded {
            transfer_id: T,
            amount: 60,
            balance_after: 100,
        })]
    );
    let src = after(src, events);
    assert_eq!(src.balance, 100);
    assert!(
        src.decide_with(&refund, &transfer(TransferStatus::Refunding, 60))
            .unwrap()
            .is_empty(),
        "a repeated refund changes nothing"
    );
}

#[test]
fn a_frozen_destination_is_still_credited() {
    let mut dst = account("dst", 0);
    dst.apply(AccountEvent::AccountFrozen(AccountFrozen {
        reason: "hold".into(),
    }));
    let events = dst
        .decide_with(
            &AccountCommand::Credit(step("dst")),
            &transfer(TransferStatus::Debited, 60),
        )
        .unwrap();
    assert!(matches!(
        events[..],
        [AccountEvent::TransferCredited(TransferCredited {
            balance_after: 60,
            ..
        })]
    ));
}

/// Issue 21 (finding 6): money arriving while a transfer is in flight must leave room for its
/// refund, or a refused credit would leave the transfer stuck with the amount held forever.
#[test]
fn a_refund_always_fits_however_much_arrives_while_the_transfer_is_in_flight() {
    let amount = domain::AMOUNT_MAX_MINOR;
    let src = account("src", amount);
    let debited = src
        .decide_with(
            &AccountCommand::Debit(step("src")),
            &transfer(TransferStatus::Requested, amount),
        )
        .unwrap();
    let mut src = after(src, debited);
    assert_eq!(src.balance, 0);
    // Fill the balance as far as the rules allow: the largest deposit that is accepted, then
    // half of it, down to one minor unit; then a credit from another transfer on top.
    let mut deposit = amount;
    while deposit >= 1 {
        match src.decide(&AccountCommand::Deposit(Deposit {
            account_id: "src".into(),
            amount: deposit,
            reference: String::new(),
            channel: DepositChannel::Unspecified,
        })) {
            Ok(events) => src = after(src, events),
            Err(error) => {
                assert_eq!(error.code(), ErrorCode::AmountOutOfRange, "{error}");
                deposit /= 2;
            }
        }
    }
    let incoming = AccountServices {
        transfer: Some(Transfer {
            id: Some(Uuid::from_u128(43)),
            from: "elsewhere".into(),
            to: "src".into(),
            amount: 1,
            currency: "EUR".into(),
            status: TransferStatus::Debited,
            ..Transfer::default()
        }),
        owner: None,
    };
    let credit = AccountCommand::Credit(TransferStep {
        account_id: "src".into(),
        transfer_id: Uuid::from_u128(43),
    });
    if let Ok(events) = src.decide_with(&credit, &incoming) {
        src = after(src, events);
    }
    // The credit of the destination was refused: the refund must land.
    let refunded = src
        .decide_with(
            &AccountCommand::Refund(step("src")),
            &transfer(TransferStatus::Refunding, amount),
        )
        .expect("the refund of a transfer in flight always fits");
    let src = after(src, refunded);
    assert!(src.transfers_in_flight.is_empty());
    assert!(
        src.balance > i64::MAX - amount,
        "the rule costs little headroom"
    );
}
