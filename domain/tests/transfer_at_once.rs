//! A transfer settled at once (`decide_at_once`) ends exactly where the process manager's steps
//! would have: same balances, same outcome, same failure code, and nothing moved on a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cqrs_es::Aggregate;
use domain::account::*;
use domain::transfer::*;
use domain::{AMOUNT_MAX_MINOR, ErrorCode};
use proptest::prelude::*;
use uuid::Uuid;

const T: Uuid = Uuid::from_u128(77);

fn account(id: &str, currency: &str, balance: i64, status: AccountStatus) -> Account {
    let mut account = Account::default();
    account.apply(AccountEvent::AccountOpened(AccountOpened {
        account_id: id.into(),
        owner: "o".into(),
        currency: currency.into(),
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
    match status {
        AccountStatus::Frozen => account.apply(AccountEvent::AccountFrozen(AccountFrozen {
            reason: "hold".into(),
        })),
        AccountStatus::Closed => account.apply(AccountEvent::AccountClosed(AccountClosed {})),
        AccountStatus::Open | AccountStatus::Unopened => {}
    }
    account
}

fn request(amount: i64) -> RequestTransfer {
    RequestTransfer {
        transfer_id: T,
        from: "src".into(),
        to: "dst".into(),
        amount,
        reference: "rent".into(),
    }
}

fn apply_all<A: Aggregate>(mut state: A, events: &[A::Event]) -> A
where
    A::Event: Clone,
{
    for e in events {
        state.apply(e.clone());
    }
    state
}

#[test]
fn a_transfer_at_once_moves_the_money_and_completes() {
    let (from, to) = (
        account("src", "EUR", 900, AccountStatus::Open),
        account("dst", "EUR", 5, AccountStatus::Open),
    );
    let settled = decide_at_once(&Transfer::default(), &request(400), &from, &to, None).unwrap();
    assert!(settled.completed());
    let TransferEvent::TransferRequested(requested) = &settled.transfer[0] else {
        panic!("the request first: {:?}", settled.transfer);
    };
    assert!(
        requested.at_once,
        "marked, so the process manager leaves it alone"
    );
    assert_eq!(settled.transfer.len(), 2);
    assert!(
        matches!(
            settled.from.as_slice(),
            [AccountEvent::TransferDebited(d)] if d.settled && d.amount == 400
        ),
        "one final debit on the source, no settle event: {:?}",
        settled.from
    );
    let (from, to) = (apply_all(from, &settled.from), apply_all(to, &settled.to));
    assert_eq!((from.balance, to.balance), (500, 405));
    assert!(from.transfers_in_flight.is_empty(), "no hold is left open");
    let transfer = apply_all(Transfer::default(), &settled.transfer);
    assert_eq!(transfer.status, TransferStatus::Completed);
    assert!(transfer.debited);
}

#[test]
fn a_refused_step_fails_the_transfer_and_moves_nothing() {
    let cases = [
        (
            900,
            1_000,
            AccountStatus::Open,
            ErrorCode::InsufficientFunds,
        ),
        (900, 10, AccountStatus::Frozen, ErrorCode::AccountFrozen),
    ];
    for (balance, amount, status, code) in cases {
        let from = account("src", "EUR", balance, status);
        let to = account("dst", "EUR", 0, AccountStatus::Open);
        let settled =
            decide_at_once(&Transfer::default(), &request(amount), &from, &to, None).unwrap();
        assert!(!settled.completed());
        assert!(settled.from.is_empty() && settled.to.is_empty());
        let transfer = apply_all(Transfer::default(), &settled.transfer);
        assert_eq!(transfer.status, TransferStatus::Failed);
        assert_eq!(
            transfer.failure.map(|(c, _)| c),
            Some(code.as_str().to_owned())
        );
    }
    // The credit refused (the destination would overflow): no debit either.
    let from = account("src", "EUR", 10, AccountStatus::Open);
    let to = account("dst", "EUR", AMOUNT_MAX_MINOR, AccountStatus::Open);
    let mut full = to.clone();
    full.balance = i64::MAX;
    let settled = decide_at_once(&Transfer::default(), &request(10), &from, &full, None).unwrap();
    assert!(!settled.completed() && settled.from.is_empty());
    assert!(matches!(
        settled.transfer.last(),
        Some(TransferEvent::TransferFailed(f)) if f.code == ErrorCode::AmountOutOfRange.as_str()
    ));
}

#[test]
fn impossible_requests_are_refused_as_on_the_step_by_step_path() {
    let open = |id: &str, currency: &str| account(id, currency, 100, AccountStatus::Open);
    let refused = |from: &Account, to: &Account, req: RequestTransfer| {
        decide_at_once(&Transfer::default(), &req, from, to, None)
            .unwrap_err()
            .code()
    };
    let closed = account("dst", "EUR", 0, AccountStatus::Closed);
    assert_eq!(
        refused(&open("src", "EUR"), &closed, request(1)),
        ErrorCode::AccountClosed
    );
    assert_eq!(
        refused(&open("src", "EUR"), &Account::default(), request(1)),
        ErrorCode::NotFound
    );
    assert_eq!(
        refused(&open("src", "EUR"), &open("dst", "USD"), request(1)),
        ErrorCode::CurrencyMismatch
    );
    assert_eq!(
        refused(&open("src", "EUR"), &open("dst", "EUR"), request(0)),
        ErrorCode::AmountOutOfRange
    );
    let mut same = request(1);
    same.to = "src".into();
    assert!(
        decide_at_once(
            &Transfer::default(),
            &same,
            &open("src", "EUR"),
            &open("src", "EUR"),
            None,
        )
        .is_err()
    );
    let requested = decide_at_once(
        &Transfer::default(),
        &request(1),
        &open("src", "EUR"),
        &open("dst", "EUR"),
        None,
    )
    .unwrap();
    let existing = apply_all(Transfer::default(), &requested.transfer);
    assert_eq!(
        refused_existing(&existing, &open("src", "EUR"), &open("dst", "EUR")),
        ErrorCode::AlreadyExists
    );
}

fn refused_existing(transfer: &Transfer, from: &Account, to: &Account) -> ErrorCode {
    decide_at_once(transfer, &request(1), from, to, None)
        .unwrap_err()
        .code()
}

/// The process manager's path, run purely: each step decided by the same rules, with the
/// facts the command-service would load.
fn by_steps(request: &RequestTransfer, from: Account, to: Account) -> (Account, Account, Transfer) {
    let facts = |from: &Account, to: &Account| TransferFacts {
        from: AccountFacts::of(from),
        to: AccountFacts::of(to),
        recorded: StepsRecorded::default(),
        owner: None,
    };
    let mut transfer = Transfer::default();
    let decided = transfer
        .decide(
            &TransferCommand::Request(request.clone()),
            &facts(&from, &to),
        )
        .unwrap();
    transfer = apply_all(transfer, &decided);
    let step = |id: &str| TransferStep {
        account_id: id.into(),
        transfer_id: T,
    };
    let services = |t: &Transfer| AccountServices {
        transfer: Some(t.clone()),
        owner: None,
    };
    let record = |t: Transfer, command: TransferCommand, recorded: StepsRecorded| {
        let events = t
            .decide(
                &command,
                &TransferFacts {
                    recorded,
                    ..TransferFacts::default()
                },
            )
            .unwrap();
        apply_all(t, &events)
    };
    let fail = |t: Transfer, error: AccountError, recorded: StepsRecorded| {
        let command = TransferCommand::Fail(FailTransfer {
            transfer_id: T,
            code: error.code().as_str().into(),
            reason: error.to_string(),
        });
        record(t, command, recorded)
    };
    let ids = RecordStep { transfer_id: T };
    let mut recorded = StepsRecorded::default();
    let from = match from.decide_with(&AccountCommand::Debit(step("src")), &services(&transfer)) {
        Err(error) => return (from, to, fail(transfer, error, recorded)),
        Ok(events) => apply_all(from, &events),
    };
    recorded.debited = true;
    transfer = record(
        transfer,
        TransferCommand::RecordDebit(ids.clone()),
        recorded,
    );
    match to.decide_with(&AccountCommand::Credit(step("dst")), &services(&transfer)) {
        Err(error) => {
            let transfer = fail(transfer, error, recorded);
            let events = from
                .decide_with(&AccountCommand::Refund(step("src")), &services(&transfer))
                .unwrap();
            let from = apply_all(from, &events);
            recorded.refunded = true;
            let transfer = record(transfer, TransferCommand::RecordRefund(ids), recorded);
            (from, to, transfer)
        }
        Ok(events) => {
            let to = apply_all(to, &events);
            recorded.credited = true;
            transfer = record(
                transfer,
                TransferCommand::RecordCredit(ids.clone()),
                recorded,
            );
            let events = from
                .decide_with(&AccountCommand::Settle(step("src")), &services(&transfer))
                .unwrap();
            let from = apply_all(from, &events);
            recorded.settled = true;
            (
                from,
                to,
                record(transfer, TransferCommand::Complete(ids), recorded),
            )
        }
    }
}

fn any_status() -> impl Strategy<Value = AccountStatus> {
    prop_oneof![Just(AccountStatus::Open), Just(AccountStatus::Frozen)]
}

proptest! {
    #[test]
    fn at_once_ends_where_the_steps_end(
        from_balance in 0..=AMOUNT_MAX_MINOR,
        to_balance in prop_oneof![0..=1_000i64, (i64::MAX - 2 * AMOUNT_MAX_MINOR)..=i64::MAX],
        amount in prop_oneof![1..=1_000i64, 1..=AMOUNT_MAX_MINOR],
        from_status in any_status(),
        to_status in any_status(),
    ) {
        let from = account("src", "EUR", from_balance, from_status);
        let mut to = account("dst", "EUR", 0, to_status);
        to.balance = to_balance;
        let req = request(amount);
        let (step_from, step_to, step_transfer) = by_steps(&req, from.clone(), to.clone());
        let settled = decide_at_once(&Transfer::default(), &req, &from, &to, None).unwrap();
        let (once_from, once_to) = (apply_all(from, &settled.from), apply_all(to, &settled.to));
        let once_transfer = apply_all(Transfer::default(), &settled.transfer);
        prop_assert_eq!(once_from.balance, step_from.balance);
        prop_assert_eq!(once_to.balance, step_to.balance);
        prop_assert_eq!(&once_from.transfers_in_flight, &step_from.transfers_in_flight);
        prop_assert_eq!(once_transfer.status, step_transfer.status);
        prop_assert_eq!(&once_transfer.failure, &step_transfer.failure);
        prop_assert_eq!(
            i128::from(once_from.balance) + i128::from(once_to.balance),
            i128::from(from_balance) + i128::from(to_balance)
        );
    }
}

/// Issue 21, finding 3: the requester's owner is part of the decision, judged on the accounts
/// the transfer is decided on. Another owner's source is a missing one, word for word, even
/// closed or short of funds, and nothing moves; the requester's own source, or no owner (an
/// admin), pays as before.
#[test]
fn a_source_of_another_owner_is_refused_as_a_missing_one_and_moves_nothing() {
    let bob = account("src", "EUR", 1_000, AccountStatus::Open); // owner "o"
    let alice = account("dst", "EUR", 0, AccountStatus::Open);
    let wire = |e: &TransferError| (e.code(), e.to_string());
    let missing = decide_at_once(
        &Transfer::default(),
        &request(10),
        &Account::default(),
        &alice,
        Some("alice"),
    )
    .unwrap_err();
    assert!(
        !missing.refuses_the_sender(),
        "a missing account is the command's refusal"
    );
    for source in [
        bob.clone(),
        account("src", "EUR", 0, AccountStatus::Closed),
        account("src", "EUR", 0, AccountStatus::Frozen),
        account("src", "USD", 0, AccountStatus::Open),
    ] {
        let refused = decide_at_once(
            &Transfer::default(),
            &request(10),
            &source,
            &alice,
            Some("alice"),
        )
        .unwrap_err();
        assert_eq!(wire(&refused), wire(&missing), "{source:?}");
        assert!(refused.refuses_the_sender(), "{refused:?}");
    }
    // Before the destination too: a missing destination does not tell a foreign source apart.
    let both = decide_at_once(
        &Transfer::default(),
        &request(10),
        &bob,
        &Account::default(),
        Some("alice"),
    )
    .unwrap_err();
    assert_eq!(wire(&both), wire(&missing));
    for owner in [Some("o"), None] {
        let settled =
            decide_at_once(&Transfer::default(), &request(10), &bob, &alice, owner).unwrap();
        assert!(settled.completed(), "{owner:?}");
    }
}

/// A failed transfer is read by both parties: what it records must not state the balance of
/// either account (a refused debit's own message names the source's balance, a refused
/// credit's the destination's).
#[test]
fn a_failed_transfer_records_no_balance() {
    let poor = account("src", "EUR", 1_234_567, AccountStatus::Open);
    let rich = account("dst", "EUR", 0, AccountStatus::Open);
    let settled = decide_at_once(
        &Transfer::default(),
        &request(7_654_321),
        &poor,
        &rich,
        None,
    )
    .unwrap();
    let Some(TransferEvent::TransferFailed(failed)) = settled.transfer.last() else {
        panic!("{settled:?}");
    };
    assert_eq!(failed.code, "insufficient_funds");
    assert!(!failed.reason.contains("1234567"), "{failed:?}");
    assert_eq!(failed.reason, failure_reason("insufficient_funds"));

    let mut full = account("dst", "EUR", 0, AccountStatus::Open);
    full.balance = i64::MAX - 3;
    let funded = account("src", "EUR", 100, AccountStatus::Open);
    let settled = decide_at_once(&Transfer::default(), &request(10), &funded, &full, None).unwrap();
    let Some(TransferEvent::TransferFailed(failed)) = settled.transfer.last() else {
        panic!("{settled:?}");
    };
    assert_eq!(failed.code, "amount_out_of_range");
    assert!(
        !failed.reason.contains(&(i64::MAX - 3).to_string()),
        "{failed:?}"
    );
}
