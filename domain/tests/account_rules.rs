//! One test per Account rule and per refusal, through cqrs-es's TestFramework: each would fail
//! if its rule were removed from `Account::decide`.

use cqrs_es::test::TestFramework;
use domain::account::*;
use domain::{AMOUNT_MAX_MINOR, ErrorCode};

type Fw = TestFramework<Account>;

const ID: &str = "acc-1";

fn opened() -> Vec<AccountEvent> {
    vec![AccountEvent::AccountOpened(AccountOpened {
        account_id: ID.into(),
        owner: "alice".into(),
        currency: "EUR".into(),
        metadata: Default::default(),
    })]
}

fn deposited(amount: i64, balance_after: i64) -> AccountEvent {
    AccountEvent::MoneyDeposited(MoneyDeposited {
        amount,
        reference: String::new(),
        balance_after,
        channel: DepositChannel::Unspecified,
    })
}

fn frozen() -> AccountEvent {
    AccountEvent::AccountFrozen(AccountFrozen {
        reason: "kyc".into(),
    })
}

fn closed() -> AccountEvent {
    AccountEvent::AccountClosed(AccountClosed {})
}

fn open_cmd() -> AccountCommand {
    AccountCommand::Open(OpenAccount {
        account_id: ID.into(),
        owner: "alice".into(),
        currency: "EUR".into(),
        metadata: Default::default(),
    })
}

fn deposit(amount: i64) -> AccountCommand {
    AccountCommand::Deposit(Deposit {
        account_id: ID.into(),
        amount,
        reference: "inv-1".into(),
        channel: DepositChannel::Unspecified,
    })
}

fn withdraw(amount: i64) -> AccountCommand {
    AccountCommand::Withdraw(Withdraw {
        account_id: ID.into(),
        amount,
        reference: String::new(),
    })
}

fn freeze() -> AccountCommand {
    AccountCommand::Freeze(Freeze {
        account_id: ID.into(),
        reason: "kyc".into(),
    })
}

fn unfreeze() -> AccountCommand {
    AccountCommand::Unfreeze(Unfreeze {
        account_id: ID.into(),
    })
}

fn close() -> AccountCommand {
    AccountCommand::Close(Close {
        account_id: ID.into(),
    })
}

fn history(extra: Vec<AccountEvent>) -> Vec<AccountEvent> {
    let mut events = opened();
    events.extend(extra);
    events
}

async fn expect_error(given: Vec<AccountEvent>, command: AccountCommand, expected: AccountError) {
    Fw::with(AccountServices::default())
        .given(given)
        .when_async(command)
        .await
        .then_expect_error(expected);
}

#[tokio::test]
async fn open_creates_the_account() {
    Fw::with(AccountServices::default())
        .given_no_previous_events()
        .when_async(open_cmd())
        .await
        .then_expect_events(opened());
}

#[tokio::test]
async fn open_twice_is_already_exists() {
    expect_error(opened(), open_cmd(), AccountError::AlreadyExists).await;
}

#[tokio::test]
async fn open_validates_its_fields() {
    for (command, field) in [
        (
            OpenAccount {
                account_id: "has.dot".into(),
                owner: "a".into(),
                currency: "EUR".into(),
                metadata: Default::default(),
            },
            "account_id",
        ),
        (
            OpenAccount {
                account_id: ID.into(),
                owner: "  ".into(),
                currency: "EUR".into(),
                metadata: Default::default(),
            },
            "owner",
        ),
        (
            OpenAccount {
                account_id: ID.into(),
                owner: "a".into(),
                currency: "eur".into(),
                metadata: Default::default(),
            },
            "currency",
        ),
    ] {
        let result = Fw::with(AccountServices::default())
            .given_no_previous_events()
            .when_async(AccountCommand::Open(command))
            .await
            .inspect_result();
        match result {
            Err(AccountError::InvalidField { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected invalid {field}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn deposit_adds_to_the_balance() {
    Fw::with(AccountServices::default())
        .given(history(vec![deposited(100, 100)]))
        .when_async(deposit(50))
        .await
        .then_expect_events(vec![AccountEvent::MoneyDeposited(MoneyDeposited {
            amount: 50,
            reference: "inv-1".into(),
            balance_after: 150,
            channel: DepositChannel::Unspecified,
        })]);
}

#[tokio::test]
async fn deposit_to_unknown_account_is_not_found() {
    expect_error(vec![], deposit(1), AccountError::NotFound).await;
}

#[tokio::test]
async fn amounts_must_be_positive_and_at_most_10_pow_15() {
    for amount in [0, -1, i64::MIN, AMOUNT_MAX_MINOR + 1, i64::MAX] {
        expect_error(
            opened(),
            deposit(amount),
            AccountError::AmountOutOfRange { amount },
        )
        .await;
        expect_error(
            history(vec![deposited(1000, 1000)]),
            withdraw(amount),
            AccountError::AmountOutOfRange { amount },
        )
        .await;
    }
    // The bound itself is allowed.
    Fw::with(AccountServices::default())
        .given(opened())
        .when_async(deposit(AMOUNT_MAX_MINOR))
        .await
        .then_expect_events(vec![AccountEvent::MoneyDeposited(MoneyDeposited {
            amount: AMOUNT_MAX_MINOR,
            reference: "inv-1".into(),
            balance_after: AMOUNT_MAX_MINOR,
            channel: DepositChannel::Unspecified,
        })]);
}

#[tokio::test]
async fn balance_overflow_is_refused_not_wrapped() {
    let near_max = i64::MAX - 10;
    expect_error(
        history(vec![deposited(near_max, near_max)]),
        deposit(11),
        AccountError::BalanceOverflow {
            balance: near_max,
            amount: 11,
        },
    )
    .await;
}

#[tokio::test]
async fn withdraw_takes_from_the_balance() {
    Fw::with(AccountServices::default())
        .given(history(vec![deposited(100, 100)]))
        .when_async(withdraw(100))
        .await
        .then_expect_events(vec![AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
            amount: 100,
            reference: String::new(),
            balance_after: 0,
        })]);
}

#[tokio::test]
async fn withdraw_beyond_balance_is_insufficient_funds() {
    expect_error(
        history(vec![deposited(100, 100)]),
        withdraw(101),
        AccountError::InsufficientFunds {
            balance: 100,
            requested: 101,
        },
    )
    .await;
}

#[tokio::test]
async fn frozen_accounts_take_deposits() {
    Fw::with(AccountServices::default())
        .given(history(vec![frozen()]))
        .when_async(deposit(5))
        .await
        .then_expect_events(vec![AccountEvent::MoneyDeposited(MoneyDeposited {
            amount: 5,
            reference: "inv-1".into(),
            balance_after: 5,
            channel: DepositChannel::Unspecified,
        })]);
}

#[tokio::test]
async fn frozen_accounts_refuse_withdrawals() {
    expect_error(
        history(vec![deposited(100, 100), frozen()]),
        withdraw(1),
        AccountError::Frozen,
    )
    .await;
}

#[tokio::test]
async fn unfreeze_restores_withdrawals() {
    Fw::with(AccountServices::default())
        .given(history(vec![
            deposited(100, 100),
            frozen(),
            AccountEvent::AccountUnfrozen(AccountUnfrozen {}),
        ]))
        .when_async(withdraw(1))
        .await
        .then_expect_events(vec![AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
            amount: 1,
            reference: String::new(),
            balance_after: 99,
        })]);
}

#[tokio::test]
async fn freeze_and_unfreeze_must_change_something() {
    expect_error(
        history(vec![frozen()]),
        freeze(),
        AccountError::AlreadyFrozen,
    )
    .await;
    expect_error(opened(), unfreeze(), AccountError::NotFrozen).await;
}

#[tokio::test]
async fn freeze_needs_a_reason() {
    let result = Fw::with(AccountServices::default())
        .given(opened())
        .when_async(AccountCommand::Freeze(Freeze {
            account_id: ID.into(),
            reason: String::new(),
        }))
        .await
        .inspect_result();
    assert!(matches!(
        result,
        Err(AccountError::InvalidField {
            field: "reason",
            ..
        })
    ));
}

#[tokio::test]
async fn close_only_at_zero_balance() {
    expect_error(
        history(vec![deposited(1, 1)]),
        close(),
        AccountError::BalanceNotZero { balance: 1 },
    )
    .await;
    Fw::with(AccountServices::default())
        .given(opened())
        .when_async(close())
        .await
        .then_expect_events(vec![closed()]);
}

#[tokio::test]
async fn frozen_accounts_cannot_close() {
    expect_error(history(vec![frozen()]), close(), AccountError::Frozen).await;
}

#[tokio::test]
async fn closed_accounts_accept_nothing() {
    for command in [deposit(1), withdraw(1), freeze(), unfreeze(), close()] {
        expect_error(history(vec![closed()]), command, AccountError::Closed).await;
    }
    expect_error(
        history(vec![closed()]),
        open_cmd(),
        AccountError::AlreadyExists,
    )
    .await;
}

#[tokio::test]
async fn reference_is_limited() {
    let result = Fw::with(AccountServices::default())
        .given(opened())
        .when_async(AccountCommand::Deposit(Deposit {
            account_id: ID.into(),
            amount: 1,
            reference: "x".repeat(257),
            channel: DepositChannel::Unspecified,
        }))
        .await
        .inspect_result();
    assert!(matches!(
        result,
        Err(AccountError::InvalidField {
            field: "reference",
            ..
        })
    ));
}

#[test]
fn every_refusal_maps_to_its_stable_code() {
    let cases = [
        (
            AccountError::InvalidField {
                field: "owner",
                reason: "must not be blank".into(),
            },
            ErrorCode::SchemaViolation,
        ),
        (
            AccountError::AmountOutOfRange { amount: 0 },
            ErrorCode::AmountOutOfRange,
        ),
        (
            AccountError::BalanceOverflow {
                balance: 1,
                amount: 1,
            },
            ErrorCode::AmountOutOfRange,
        ),
        (AccountError::NotFound, ErrorCode::NotFound),
        (AccountError::AlreadyExists, ErrorCode::AlreadyExists),
        (
            AccountError::InsufficientFunds {
                balance: 0,
                requested: 1,
            },
            ErrorCode::InsufficientFunds,
        ),
        (AccountError::Frozen, ErrorCode::AccountFrozen),
        (AccountError::Closed, ErrorCode::AccountClosed),
        (AccountError::AlreadyFrozen, ErrorCode::Conflict),
        (AccountError::NotFrozen, ErrorCode::Conflict),
        (
            AccountError::BalanceNotZero { balance: 3 },
            ErrorCode::Conflict,
        ),
    ];
    for (error, code) in cases {
        assert_eq!(error.code(), code, "{error:?}");
        assert!(error.details().is_object());
    }
}
