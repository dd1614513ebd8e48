//! Our snapshots: loading from a snapshot plus the later events gives exactly the state a full
//! replay gives, for any history; and why cqrs-es 0.5's own snapshot mode is not used.

use command_service::executor::{Executor, ExecutorLimits};
use command_service::incoming::{Command, IncomingCommand};
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, EventStore};
use domain::account::*;
use domain::{Account, CommandReply};
use postgres_es::PostgresEventRepository;
use proptest::prelude::*;
use sqlx::PgPool;

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) async fn fresh_pool() -> PgPool {
    let servers = tests::Servers::get();
    let db = tests::app::create_test_database(servers).await;
    PgPool::connect(&servers.pg_url(&db)).await.unwrap()
}

pub(crate) fn incoming(command: AccountCommand) -> IncomingCommand {
    IncomingCommand {
        actor: "prop".into(),
        ..IncomingCommand::new(uuid::Uuid::new_v4(), Command::Account(command))
    }
}

pub(crate) fn step(id: &str) -> impl Strategy<Value = AccountCommand> {
    let id = id.to_owned();
    let (a, b, c, d) = (id.clone(), id.clone(), id.clone(), id);
    prop_oneof![
        6 => (1..500i64).prop_map(move |amount| AccountCommand::Deposit(Deposit { account_id: a.clone(), amount, reference: String::new(), channel: Default::default() })),
        4 => (1..700i64).prop_map(move |amount| AccountCommand::Withdraw(Withdraw { account_id: b.clone(), amount, reference: String::new() })),
        1 => Just(AccountCommand::Freeze(Freeze { account_id: c.clone(), reason: "r".into() })),
        1 => Just(AccountCommand::Unfreeze(Unfreeze { account_id: d.clone() })),
    ]
}

#[test]
fn snapshot_loaded_state_equals_full_replay() {
    let rt = runtime();
    let pool = rt.block_on(fresh_pool());
    let executor = Executor::new(
        event_store::EventStore::new(pool.clone()),
        ExecutorLimits {
            conflict_retries_max: 5,
            snapshot_every: 3,
            // Off: this is about snapshots, which a warm cache would bypass.
            aggregate_cache_max: 0,
            group_commit: false,
            account_queue_max: 1024,
            transfers_at_once: false,
        },
    );
    let replay = PersistedEventStore::<_, Account>::new_event_store(PostgresEventRepository::new(
        pool.clone(),
    ));
    let case = std::sync::atomic::AtomicU32::new(0);
    let config = ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    };
    proptest!(config, |(commands in prop::collection::vec(step("p"), 1..40))| {
        let id = format!("snap-{}", case.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
        let commands: Vec<AccountCommand> = std::iter::once(AccountCommand::Open(OpenAccount {
            account_id: id.clone(), owner: "o".into(), currency: "EUR".into(),
            metadata: Default::default(),
        }))
        .chain(commands.into_iter().map(|c| retarget(c, &id)))
        .collect();
        rt.block_on(async {
            let mut accepted = 0usize;
            for command in commands {
                if let Ok(CommandReply::Accepted { .. }) = executor.execute(incoming(command)).await {
                    accepted += 1;
                }
            }
            let from_snapshot = executor.load::<Account>(&id).await.unwrap();
            let full = replay.load_aggregate(&id).await.unwrap();
            prop_assert_eq!(&from_snapshot.aggregate, &full.aggregate);
            prop_assert_eq!(from_snapshot.sequence, full.current_sequence);
            prop_assert_eq!(from_snapshot.sequence, accepted);
            Ok(())
        })?;
    });
    // The property is only meaningful if snapshots were actually taken and used.
    let snapshots: i64 = rt
        .block_on(sqlx::query_scalar("SELECT count(*) FROM aggregate_snapshots").fetch_one(&pool))
        .unwrap();
    assert!(snapshots > 0, "no snapshot was ever written");
}

pub(crate) fn retarget(command: AccountCommand, id: &str) -> AccountCommand {
    let id = id.to_owned();
    match command {
        AccountCommand::Deposit(c) => AccountCommand::Deposit(Deposit {
            account_id: id,
            ..c
        }),
        AccountCommand::Withdraw(c) => AccountCommand::Withdraw(Withdraw {
            account_id: id,
            ..c
        }),
        AccountCommand::Freeze(c) => AccountCommand::Freeze(Freeze {
            account_id: id,
            ..c
        }),
        AccountCommand::Unfreeze(_) => AccountCommand::Unfreeze(Unfreeze { account_id: id }),
        other => other,
    }
}

#[tokio::test]
async fn a_stale_or_corrupt_snapshot_is_never_trusted_over_events() {
    let pool = fresh_pool().await;
    let executor = Executor::new(
        event_store::EventStore::new(pool.clone()),
        ExecutorLimits {
            conflict_retries_max: 5,
            snapshot_every: 2,
            aggregate_cache_max: 0,
            group_commit: false,
            account_queue_max: 1024,
            transfers_at_once: false,
        },
    );
    executor
        .execute(incoming(AccountCommand::Open(OpenAccount {
            account_id: "s".into(),
            owner: "o".into(),
            currency: "EUR".into(),
            metadata: Default::default(),
        })))
        .await
        .unwrap();
    for _ in 0..3 {
        executor
            .execute(incoming(AccountCommand::Deposit(Deposit {
                account_id: "s".into(),
                amount: 10,
                reference: String::new(),
                channel: Default::default(),
            })))
            .await
            .unwrap();
    }
    // An unreadable snapshot payload: loading falls back to the events.
    sqlx::query("UPDATE aggregate_snapshots SET payload = '{\"garbage\": true}'")
        .execute(&pool)
        .await
        .unwrap();
    let loaded = executor.load::<Account>("s").await.unwrap();
    assert_eq!(loaded.aggregate.balance, 30);
    assert_eq!(loaded.sequence, 4);
}

/// A minimal aggregate whose `apply` is not idempotent, to show the defect plainly.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Counter {
    value: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Incremented;

impl cqrs_es::DomainEvent for Incremented {
    fn event_type(&self) -> String {
        "Incremented".into()
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = ();
    type Event = Incremented;
    type Error = Never;
    type Services = ();

    async fn handle(
        &mut self,
        _command: (),
        _services: &(),
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), Never> {
        sink.write(Incremented, self).await;
        Ok(())
    }

    fn apply(&mut self, _event: Incremented) {
        self.value += 1;
    }
}

/// Reproduces the upstream defect that made us write our own snapshots (see
/// docs/design/own-snapshots.md): in snapshot mode `commit` applies the events a second time on top
/// of the state `handle` already changed, and saves that. If this test starts failing, the
/// defect is fixed upstream.
#[tokio::test]
async fn upstream_snapshot_mode_applies_events_twice() {
    let pool = fresh_pool().await;
    let cqrs = postgres_es::postgres_snapshot_cqrs::<Counter>(pool.clone(), vec![], 1, ());
    cqrs.execute("c1", ()).await.unwrap();
    let store = PersistedEventStore::<_, Counter>::new_snapshot_store(
        PostgresEventRepository::new(pool.clone()),
        1,
    );
    let loaded = store.load_aggregate("c1").await.unwrap();
    assert_eq!(
        loaded.aggregate.value, 2,
        "one increment, but the snapshot holds 2"
    );
    // The events themselves are right: a full replay gives 1.
    let replay =
        PersistedEventStore::<_, Counter>::new_event_store(PostgresEventRepository::new(pool));
    assert_eq!(
        replay.load_aggregate("c1").await.unwrap().aggregate.value,
        1
    );
}
