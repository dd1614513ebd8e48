//! Properties of the ledger over random sequences of every command on one `Book`: account
//! commands, multi-leg transactions over client and system accounts in two currencies, and
//! holds placed, captured (in full or in part), voided and expired while time moves on.
//!
//! After every command: no available balance below `-overdraft_limit`, no balance above
//! `max_balance`; every currency sums to zero over all accounts (system ones included, read
//! off the client accounts' events by `postings`); each stated balance follows from the
//! postings; every hold ends at most once; and a refused command changed nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed expectation should panic

mod ledger_common;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::Aggregate;
use domain::account::*;
use domain::ledger::postings;
use domain::ledger::*;
use domain::{AMOUNT_MAX_MINOR, ErrorCode};
use ledger_common::{currency_sums, t0};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use uuid::Uuid;

/// Client accounts and the currency each is opened in (mostly: an open in the other currency
/// is generated too).
const CLIENTS: [(&str, &str); 5] = [
    ("a", "EUR"),
    ("b", "EUR"),
    ("c", "EUR"),
    ("d", "USD"),
    ("e", "USD"),
];
const CURRENCIES: [&str; 2] = ["EUR", "USD"];
const OWNERS: [&str; 2] = ["o1", "o2"];
/// Few ids, so commands meet each other's transactions and holds (and reuse their ids).
const IDS: u128 = 6;

#[derive(Debug, Clone)]
enum Op {
    Account(AccountCommand, Option<&'static str>),
    Post(PostTransaction, Option<&'static str>),
    Hold(HoldCommand, Option<&'static str>),
    /// Time moves on by this many seconds.
    Wait(i64),
}

fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        40 => 1..=150i64,
        10 => 150..=600i64,
        1 => Just(0i64),
        1 => Just(AMOUNT_MAX_MINOR),
        1 => Just(AMOUNT_MAX_MINOR + 1),
    ]
}

fn sender() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![3 => Just(None), 1 => prop::sample::select(OWNERS.to_vec()).prop_map(Some)]
}

fn client() -> impl Strategy<Value = String> {
    prop::sample::select(CLIENTS.to_vec()).prop_map(|(id, _)| id.to_owned())
}

/// Either side of a leg in `currency`: mostly that currency's accounts, system or client;
/// sometimes anything (a currency mismatch).
fn party(currency: &'static str) -> impl Strategy<Value = String> {
    let own: Vec<String> = CLIENTS
        .iter()
        .filter(|(_, c)| *c == currency)
        .map(|(id, _)| (*id).to_owned())
        .collect();
    let system: Vec<String> = SystemPurpose::ALL
        .iter()
        .map(|p| SystemAccount::new(*p, currency).to_string())
        .collect();
    prop_oneof![
        12 => prop::sample::select(own),
        6 => prop::sample::select(system),
        1 => client(),
        1 => prop::sample::select(vec!["@world:USD".to_owned(), "@fees:EUR".to_owned()]),
    ]
}

fn leg() -> impl Strategy<Value = Leg> {
    prop::sample::select(CURRENCIES.to_vec()).prop_flat_map(|currency| {
        (party(currency), party(currency), amount()).prop_map(move |(from, to, amount)| Leg {
            from,
            to,
            amount,
            currency: currency.to_owned(),
        })
    })
}

fn id() -> impl Strategy<Value = Uuid> {
    (1..=IDS).prop_map(Uuid::from_u128)
}

fn account_command() -> impl Strategy<Value = AccountCommand> {
    let open = (
        prop::sample::select(CLIENTS.to_vec()),
        prop::sample::select(OWNERS.to_vec()),
        prop::bool::weighted(0.1),
    )
        .prop_map(|((id, currency), owner, other)| {
            let currency = match (other, currency) {
                (false, c) => c,
                (true, "EUR") => "USD",
                (true, _) => "EUR",
            };
            ledger_common::open(id, owner, currency)
        });
    let limits = (
        client(),
        prop_oneof![2 => Just(0i64), 1 => Just(100i64), 1 => 0..=1_000i64, 1 => Just(-1i64)],
        prop_oneof![2 => Just(None), 1 => (0..=2_000i64).prop_map(Some), 1 => Just(Some(-1i64))],
    )
        .prop_map(|(account_id, overdraft_limit, max_balance)| {
            AccountCommand::SetLimits(SetLimits {
                account_id,
                overdraft_limit,
                max_balance,
                reason: "risk review".into(),
            })
        });
    prop_oneof![
        4 => open,
        6 => (client(), amount()).prop_map(|(id, a)| ledger_common::deposit(&id, a)),
        4 => (client(), amount()).prop_map(|(account_id, amount)| AccountCommand::Withdraw(Withdraw { account_id, amount, reference: String::new() })),
        3 => limits,
        1 => (client(), "[a-z]{0,3}").prop_map(|(account_id, reason)| AccountCommand::Freeze(Freeze { account_id, reason })),
        1 => client().prop_map(|account_id| AccountCommand::Unfreeze(Unfreeze { account_id })),
        1 => client().prop_map(|account_id| AccountCommand::Close(Close { account_id })),
    ]
}

fn hold_command() -> impl Strategy<Value = HoldCommand> {
    let place = (
        id(),
        client(),
        amount(),
        prop::option::weighted(0.6, -2..25i64),
    )
        .prop_map(|(hold_id, account_id, amount, expires_in)| {
            HoldCommand::Place(PlaceHold {
                hold_id,
                account_id,
                amount,
                // Relative to t0: whether it is still ahead depends on how far time has moved.
                expires_at: expires_in.map(|s| t0() + Duration::seconds(s)),
                reference: String::new(),
            })
        });
    let capture = (
        id(),
        prop::option::weighted(0.5, amount()),
        prop::sample::select(CURRENCIES.to_vec()).prop_flat_map(party),
    )
        .prop_map(|(hold_id, amount, to)| {
            HoldCommand::Capture(CaptureHold {
                hold_id,
                amount,
                to,
            })
        });
    prop_oneof![
        3 => place,
        3 => capture,
        1 => id().prop_map(|hold_id| HoldCommand::Void(VoidHold { hold_id })),
        1 => id().prop_map(|hold_id| HoldCommand::Expire(VoidHold { hold_id })),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let post = (id(), prop::collection::vec(leg(), 1..=8)).prop_map(|(transaction_id, legs)| {
        PostTransaction {
            transaction_id,
            legs,
            reference: String::new(),
            metadata: BTreeMap::new(),
        }
    });
    prop_oneof![
        6 => (account_command(), sender()).prop_map(|(c, s)| Op::Account(c, s)),
        5 => (post, sender()).prop_map(|(c, s)| Op::Post(c, s)),
        5 => (hold_command(), sender()).prop_map(|(c, s)| Op::Hold(c, s)),
        2 => (1..10i64).prop_map(Op::Wait),
    ]
}

/// Most sequences start from opened and funded accounts, so the commands after meet money to
/// move; a few start from nothing.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    let opened = (
        prop::collection::vec(prop::sample::select(OWNERS.to_vec()), CLIENTS.len()),
        prop::collection::vec(0..2_000i64, CLIENTS.len()),
    )
        .prop_map(|(owners, balances)| {
            let mut setup = Vec::new();
            for (((id, currency), owner), balance) in CLIENTS.iter().zip(owners).zip(balances) {
                setup.push(Op::Account(ledger_common::open(id, owner, currency), None));
                setup.push(Op::Account(ledger_common::deposit(id, balance), None));
            }
            setup
        });
    (
        prop_oneof![4 => opened, 1 => Just(Vec::new())],
        prop::collection::vec(op(), 0..80),
    )
        .prop_map(|(mut setup, ops)| {
            setup.extend(ops);
            setup
        })
}

/// Everything decided so far: the accounts (in the book), the transactions and holds as their
/// events left them, and the clock.
#[derive(Debug, Clone, PartialEq)]
struct World {
    book: Book,
    transactions: BTreeMap<Uuid, Transaction>,
    holds: BTreeMap<Uuid, Hold>,
    /// Every hold event, for counting ends.
    hold_events: Vec<(Uuid, HoldEvent)>,
    now: DateTime<Utc>,
}

impl World {
    fn new() -> Self {
        World {
            book: Book::default(),
            transactions: BTreeMap::new(),
            holds: BTreeMap::new(),
            hold_events: Vec::new(),
            now: t0(),
        }
    }

    /// Decides `op`; the error code when refused.
    fn step(&mut self, op: &Op) -> Result<(), ErrorCode> {
        match op {
            Op::Account(command, owner) => {
                let services = AccountServices {
                    owner: owner.map(str::to_owned),
                    ..AccountServices::default()
                };
                self.book
                    .decide_account(command, &services)
                    .map_err(|e| e.code())
            }
            Op::Post(command, owner) => {
                let id = command.transaction_id;
                let transaction = self.transactions.get(&id).cloned().unwrap_or_default();
                let events = transaction
                    .post(command, &mut self.book, *owner)
                    .map_err(|e| e.code())?;
                let entry = self.transactions.entry(id).or_default();
                for event in events {
                    entry.apply(event);
                }
                Ok(())
            }
            Op::Hold(command, owner) => {
                let id = command.hold_id();
                let hold = self.holds.get(&id).cloned().unwrap_or_default();
                let events = hold
                    .decide(command, &mut self.book, *owner, self.now)
                    .map_err(|e| e.code())?;
                let entry = self.holds.entry(id).or_default();
                for event in events {
                    entry.apply(event.clone());
                    self.hold_events.push((id, event));
                }
                Ok(())
            }
            Op::Wait(seconds) => {
                self.now += Duration::seconds(*seconds);
                Ok(())
            }
        }
    }
}

/// Every invariant of a world reached by accepted commands.
fn check(world: &World) -> Result<(), TestCaseError> {
    let book = &world.book;
    for (id, account) in book.accounts() {
        if account.status == AccountStatus::Unopened {
            continue;
        }
        prop_assert!(
            account.available() >= -account.overdraft_limit,
            "{id}: available {} below -{} ({account:?})",
            account.available(),
            account.overdraft_limit
        );
        if let Some(max) = account.max_balance {
            prop_assert!(
                account.balance <= max,
                "{id}: balance above {max}: {account:?}"
            );
        }
        prop_assert_eq!(account.held, account.holds.values().sum::<i64>(), "{}", id);
        for (hold_id, amount) in &account.holds {
            let hold = world.holds.get(hold_id).cloned().unwrap_or_default();
            prop_assert_eq!(hold.status, HoldStatus::Held, "{} holds {}", id, hold_id);
            prop_assert_eq!(
                (hold.account_id.as_str(), hold.amount),
                (id.as_str(), *amount)
            );
        }
    }
    for (currency, sum) in currency_sums(book) {
        prop_assert_eq!(sum, 0, "{} does not balance", currency);
    }
    check_stated_balances(book)?;
    check_holds_end_once(world)
}

/// Replayed from scratch, each stated balance is the previous one plus the event's postings.
fn check_stated_balances(book: &Book) -> Result<(), TestCaseError> {
    for (id, events) in book.events() {
        let mut replayed = Account::default();
        for event in events {
            let before = replayed.balance;
            replayed.apply(event.clone());
            prop_assert_eq!(
                replayed.balance,
                before + postings::own_change(event),
                "{}: {:?}",
                id,
                event
            );
        }
        prop_assert_eq!(&replayed, &book.account(id), "{}: replay differs", id);
    }
    Ok(())
}

fn check_holds_end_once(world: &World) -> Result<(), TestCaseError> {
    let mut released: BTreeMap<Uuid, usize> = BTreeMap::new();
    for events in world.book.events().values() {
        for event in events {
            if let AccountEvent::FundsReleased(e) = event {
                *released.entry(e.hold_id).or_default() += 1;
            }
        }
    }
    let mut ends: BTreeMap<Uuid, usize> = BTreeMap::new();
    for (id, event) in &world.hold_events {
        if !matches!(event, HoldEvent::HoldPlaced(_)) {
            *ends.entry(*id).or_default() += 1;
        }
    }
    for (id, hold) in &world.holds {
        let ended = !matches!(hold.status, HoldStatus::Held | HoldStatus::Unplaced);
        let count = released.get(id).copied().unwrap_or(0);
        prop_assert_eq!(
            count,
            usize::from(ended),
            "hold {} released {} times",
            id,
            count
        );
        prop_assert_eq!(ends.get(id).copied().unwrap_or(0), usize::from(ended));
        prop_assert!(hold.captured <= hold.amount, "{hold:?}");
    }
    prop_assert!(released.keys().all(|id| world.holds.contains_key(id)));
    Ok(())
}

fn run(ops: &[Op]) -> Result<Vec<Result<(), ErrorCode>>, TestCaseError> {
    let mut world = World::new();
    let mut outcomes = Vec::new();
    for op in ops {
        let before = world.clone();
        let outcome = world.step(op);
        if let Err(code) = outcome {
            prop_assert_eq!(
                &world,
                &before,
                "refused ({:?}) {:?} changed the world",
                code,
                op
            );
        }
        check(&world).map_err(|e| TestCaseError::fail(format!("after {op:?}: {e}")))?;
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_books_balance_and_limits_hold_after_every_command(ops in ops()) {
        run(&ops)?;
    }
}

/// The properties are only as good as what the generator reaches: accepted multi-leg
/// transactions, captures in full and in part, voids, expiries, overdrafts, and the refusals.
#[test]
fn the_generator_reaches_every_outcome() {
    // A fixed seed: the same sequences every run, so reaching each outcome is not luck.
    let mut runner = TestRunner::deterministic();
    let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
    let strategy = ops();
    for _ in 0..300 {
        let ops = strategy
            .new_tree(&mut runner)
            .expect("a sequence")
            .current();
        let outcomes = run(&ops).expect("properties hold");
        for (op, outcome) in ops.iter().zip(outcomes) {
            *seen.entry(kind(op, outcome)).or_default() += 1;
        }
    }
    for wanted in [
        "post accepted, 1 leg",
        "post accepted, several legs",
        "capture accepted, full",
        "capture accepted, partial",
        "void accepted",
        "expire accepted",
        "set_limits accepted",
        "limit_exceeded",
        "hold_ended",
        "currency_mismatch",
        "insufficient_funds",
    ] {
        assert!(
            seen.contains_key(wanted),
            "never reached {wanted}: {seen:#?}"
        );
    }
}

fn kind(op: &Op, outcome: Result<(), ErrorCode>) -> &'static str {
    match (op, outcome) {
        (_, Err(ErrorCode::LimitExceeded)) => "limit_exceeded",
        (_, Err(ErrorCode::HoldEnded)) => "hold_ended",
        (_, Err(ErrorCode::CurrencyMismatch)) => "currency_mismatch",
        (_, Err(ErrorCode::InsufficientFunds)) => "insufficient_funds",
        (_, Err(_)) => "other refusal",
        (Op::Post(c, _), Ok(())) if c.legs.len() == 1 => "post accepted, 1 leg",
        (Op::Post(..), Ok(())) => "post accepted, several legs",
        (Op::Hold(HoldCommand::Capture(c), _), Ok(())) if c.amount.is_none() => {
            "capture accepted, full"
        }
        (Op::Hold(HoldCommand::Capture(_), _), Ok(())) => "capture accepted, partial",
        (Op::Hold(HoldCommand::Void(_), _), Ok(())) => "void accepted",
        (Op::Hold(HoldCommand::Expire(_), _), Ok(())) => "expire accepted",
        (Op::Account(AccountCommand::SetLimits(_), _), Ok(())) => "set_limits accepted",
        _ => "other accepted",
    }
}
