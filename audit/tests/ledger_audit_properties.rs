//! The audit against the domain over random histories: whatever the domain decides (deposits,
//! withdrawals, limits, freezes, multi-leg transactions, holds captured, voided and expired),
//! the audit finds nothing; and a history with one stated amount changed is found.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed expectation should panic

use std::collections::BTreeMap;

use audit::fold::AccountFold;
use audit::ledger_fold::{HoldFold, TransactionFold};
use audit::ledger_totals::CurrencyTotals;
use audit::transaction_ledger::TransactionLedger;
use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::Aggregate;
use domain::account::*;
use domain::ledger::*;
use proptest::prelude::*;
use uuid::Uuid;

const CLIENTS: [(&str, &str); 3] = [("a", "EUR"), ("b", "EUR"), ("u", "USD")];

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Account(AccountCommand),
    Post(PostTransaction),
    Hold(HoldCommand),
    Wait(i64),
}

fn client() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "u"]).prop_map(str::to_owned)
}

fn party() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a",
        "b",
        "u",
        "@world:EUR",
        "@fees:EUR",
        "@exchange:EUR",
        "@world:USD",
        "@exchange:USD",
    ])
    .prop_map(str::to_owned)
}

/// Mostly the leg's currency's own accounts, so that multi-leg transactions go through;
/// sometimes any (a currency mismatch, refused).
fn leg() -> impl Strategy<Value = Leg> {
    prop::sample::select(vec!["EUR", "USD"]).prop_flat_map(|currency| {
        let own: Vec<String> = match currency {
            "EUR" => vec!["a", "b", "@world:EUR", "@fees:EUR", "@exchange:EUR"],
            _ => vec!["u", "@world:USD", "@exchange:USD"],
        }
        .into_iter()
        .map(str::to_owned)
        .collect();
        let side = move || prop_oneof![9 => prop::sample::select(own.clone()), 1 => party()];
        (side(), side(), 1..300i64).prop_map(move |(from, to, amount)| Leg {
            from,
            to,
            amount,
            currency: currency.into(),
        })
    })
}

fn id() -> impl Strategy<Value = Uuid> {
    (1..=5u128).prop_map(Uuid::from_u128)
}

fn op() -> impl Strategy<Value = Op> {
    let account = prop_oneof![
        (client(), 1..500i64).prop_map(|(account_id, amount)| AccountCommand::Deposit(Deposit {
            account_id,
            amount,
            reference: String::new(),
            channel: DepositChannel::Card,
        })),
        (client(), 1..500i64).prop_map(|(account_id, amount)| AccountCommand::Withdraw(Withdraw {
            account_id,
            amount,
            reference: String::new(),
        })),
        (client(), 0..300i64, prop::option::of(0..2_000i64)).prop_map(
            |(account_id, overdraft_limit, max_balance)| AccountCommand::SetLimits(SetLimits {
                account_id,
                overdraft_limit,
                max_balance,
                reason: "review".into(),
            })
        ),
        client().prop_map(|account_id| AccountCommand::Freeze(Freeze {
            account_id,
            reason: "check".into(),
        })),
        client().prop_map(|account_id| AccountCommand::Unfreeze(Unfreeze { account_id })),
    ];
    let post = (id(), prop::collection::vec(leg(), 1..5)).prop_map(|(transaction_id, legs)| {
        PostTransaction {
            transaction_id,
            legs,
            reference: String::new(),
            metadata: BTreeMap::new(),
        }
    });
    let hold = prop_oneof![
        (id(), client(), 1..400i64, prop::option::of(1..20i64)).prop_map(
            |(hold_id, account_id, amount, expires)| HoldCommand::Place(PlaceHold {
                hold_id,
                account_id,
                amount,
                expires_at: expires.map(|s| t0() + Duration::seconds(s)),
                reference: String::new(),
            })
        ),
        (id(), prop::option::of(1..400i64), party()).prop_map(|(hold_id, amount, to)| {
            HoldCommand::Capture(CaptureHold {
                hold_id,
                amount,
                to,
            })
        }),
        id().prop_map(|hold_id| HoldCommand::Void(VoidHold { hold_id })),
        id().prop_map(|hold_id| HoldCommand::Expire(VoidHold { hold_id })),
    ];
    prop_oneof![
        3 => account.prop_map(Op::Account),
        3 => post.prop_map(Op::Post),
        3 => hold.prop_map(Op::Hold),
        1 => (1..8i64).prop_map(Op::Wait),
    ]
}

/// The events a store would hold after `ops`, per aggregate, decided by the domain.
#[derive(Debug, Clone, Default)]
struct Store {
    accounts: BTreeMap<String, Vec<AccountEvent>>,
    transactions: BTreeMap<Uuid, Vec<TransactionEvent>>,
    holds: BTreeMap<Uuid, Vec<HoldEvent>>,
}

fn decide(ops: &[Op]) -> Store {
    let mut book = Book::default();
    let admin = AccountServices::default();
    for (id, currency) in CLIENTS {
        let open = AccountCommand::Open(OpenAccount {
            account_id: id.into(),
            owner: "o".into(),
            currency: currency.into(),
            metadata: BTreeMap::new(),
        });
        book.decide_account(&open, &admin).unwrap();
        let deposit = AccountCommand::Deposit(Deposit {
            account_id: id.into(),
            amount: 150,
            reference: String::new(),
            channel: DepositChannel::Cash,
        });
        book.decide_account(&deposit, &admin).unwrap();
    }
    let mut store = Store::default();
    let mut now = t0();
    for op in ops {
        match op {
            Op::Account(c) => {
                let _ = book.decide_account(c, &admin);
            }
            Op::Post(c) => {
                let mut transaction = Transaction::default();
                for e in store
                    .transactions
                    .get(&c.transaction_id)
                    .into_iter()
                    .flatten()
                {
                    transaction.apply(e.clone());
                }
                if let Ok(events) = transaction.post(c, &mut book, None) {
                    store
                        .transactions
                        .entry(c.transaction_id)
                        .or_default()
                        .extend(events);
                }
            }
            Op::Hold(c) => {
                let mut hold = Hold::default();
                for e in store.holds.get(&c.hold_id()).into_iter().flatten() {
                    hold.apply(e.clone());
                }
                if let Ok(events) = hold.decide(c, &mut book, None, now) {
                    store.holds.entry(c.hold_id()).or_default().extend(events);
                }
            }
            Op::Wait(s) => now += Duration::seconds(*s),
        }
    }
    store.accounts = book.events().clone();
    store
}

/// Every finding, per aggregate (the fold stops at its first) and across aggregates.
fn audit(store: &Store) -> Vec<String> {
    let mut found = Vec::new();
    let mut ledger = TransactionLedger::default();
    let mut totals = CurrencyTotals::default();
    for (id, events) in &store.accounts {
        let mut fold = AccountFold::default();
        let mut broken = false;
        for (n, event) in events.iter().enumerate() {
            let sequence = i64::try_from(n).unwrap() + 1;
            if !broken && let Err(e) = fold.apply_parsed(event, sequence) {
                found.push(format!("account {id} event {sequence}: {}", e.reason()));
                broken = true;
            }
            ledger.observe_account(id, &fold.state.currency, event);
            totals.observe(id, &fold.state.currency, event);
        }
    }
    for (id, events) in &store.transactions {
        let mut fold = TransactionFold::default();
        for event in events {
            if let Err(e) = fold.apply_parsed(&id.to_string(), event, 1) {
                found.push(format!("transaction {id}: {}", e.reason()));
            }
            ledger.observe_transaction(event);
        }
    }
    for (id, events) in &store.holds {
        let mut fold = HoldFold::default();
        for (n, event) in events.iter().enumerate() {
            let sequence = i64::try_from(n).unwrap() + 1;
            if let Err(e) = fold.apply_parsed(&id.to_string(), event, sequence) {
                found.push(format!("hold {id}: {}", e.reason()));
            }
            ledger.observe_hold(*id, event);
        }
    }
    let across = ledger.findings().into_iter().chain(totals.findings());
    found.extend(across.map(|f| f.to_string()));
    found
}

/// The amount an event moves, to tamper with.
fn amount_of(event: &mut AccountEvent) -> Option<&mut i64> {
    match event {
        AccountEvent::MoneyDeposited(e) => Some(&mut e.amount),
        AccountEvent::MoneyWithdrawn(e) => Some(&mut e.amount),
        AccountEvent::LegsPosted(e) => e.legs.first_mut().map(|l| &mut l.amount),
        AccountEvent::FundsHeld(e) => Some(&mut e.amount),
        AccountEvent::FundsReleased(e) => Some(&mut e.amount),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn what_the_domain_decides_the_audit_passes(ops in prop::collection::vec(op(), 0..60)) {
        let store = decide(&ops);
        prop_assert_eq!(audit(&store), Vec::<String>::new());
    }

    #[test]
    fn one_amount_changed_is_found(ops in prop::collection::vec(op(), 1..60), pick in any::<prop::sample::Index>(), by in prop_oneof![Just(-1i64), Just(1i64)]) {
        let mut store = decide(&ops);
        let mut amounts: Vec<(String, usize)> = Vec::new();
        for (id, events) in &mut store.accounts {
            for (n, event) in events.iter_mut().enumerate() {
                if amount_of(event).is_some() {
                    amounts.push((id.clone(), n));
                }
            }
        }
        prop_assume!(!amounts.is_empty());
        let (id, n) = pick.get(&amounts).clone();
        let event = &mut store.accounts.get_mut(&id).unwrap()[n];
        let amount = amount_of(event).unwrap();
        *amount += by;
        let changed = event.clone();
        let found = audit(&store);
        prop_assert!(!found.is_empty(), "{:?} on {} changed by {} went unnoticed", changed, id, by);
    }
}

/// Not vacuous: the histories audited hold every kind of ledger event, overdrafts included.
#[test]
fn the_generator_reaches_every_ledger_event() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = prop::collection::vec(op(), 30..60);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..200 {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        let store = decide(&ops);
        for events in store.accounts.values() {
            let mut state = Account::default();
            for event in events {
                state.apply(event.clone());
                let kind = match event {
                    AccountEvent::LegsPosted(e) if e.legs.len() > 1 => {
                        "LegsPosted, several legs".into()
                    }
                    AccountEvent::FundsReleased(e) => format!("FundsReleased {:?}", e.end),
                    other => cqrs_es::DomainEvent::event_type(other),
                };
                *seen.entry(kind).or_default() += 1;
                if state.balance < 0 {
                    *seen.entry("overdrawn".into()).or_default() += 1;
                }
            }
        }
    }
    for wanted in [
        "LegsPosted",
        "LegsPosted, several legs",
        "FundsHeld",
        "FundsReleased Captured",
        "FundsReleased Voided",
        "FundsReleased Expired",
        "LimitsSet",
        "overdrawn",
    ] {
        assert!(
            seen.contains_key(wanted),
            "never reached {wanted}: {seen:#?}"
        );
    }
}
