//! The command-service's in-memory aggregates: a warm aggregate is never trusted over what other
//! instances committed, and the chain heads it remembers keep the hash chain intact.

use command_service::executor::{Executor, ExecutorLimits};
use cqrs_es::EventStore;
use cqrs_es::persist::PersistedEventStore;
use domain::account::*;
use domain::{Account, CommandReply, ErrorCode};
use postgres_es::PostgresEventRepository;
use proptest::prelude::*;
use sqlx::PgPool;

use super::snapshots::{fresh_pool, incoming, retarget, runtime, step};

fn instance(pool: &PgPool) -> Executor {
    Executor::new(
        event_store::EventStore::new(pool.clone()),
        ExecutorLimits {
            conflict_retries_max: 5,
            snapshot_every: 0,
            aggregate_cache_max: 64,
            group_commit: true,
            account_queue_max: 1024,
            transfers_at_once: false,
        },
    )
}

async fn chain_is_clean(pool: &PgPool) -> bool {
    let report = audit::verify::verify(pool, &audit::verify::VerifyOptions::default(), |_| {})
        .await
        .unwrap();
    report.findings_total == 0 && report.events > 0
}

#[tokio::test]
async fn a_warm_aggregate_sees_what_another_instance_committed() {
    let pool = fresh_pool().await;
    let (a, b) = (instance(&pool), instance(&pool));
    let open = AccountCommand::Open(OpenAccount {
        account_id: "warm".into(),
        owner: "o".into(),
        currency: "EUR".into(),
        metadata: Default::default(),
    });
    let deposit = |amount| {
        AccountCommand::Deposit(Deposit {
            account_id: "warm".into(),
            amount,
            reference: String::new(),
            channel: Default::default(),
        })
    };
    let withdraw = |amount| {
        AccountCommand::Withdraw(Withdraw {
            account_id: "warm".into(),
            amount,
            reference: String::new(),
        })
    };
    for command in [open, deposit(100)] {
        let reply = a.execute(incoming(command)).await.unwrap();
        assert!(matches!(reply, CommandReply::Accepted { .. }), "{reply:?}");
    }
    // `a` now holds the account in memory at balance 100; `b` moves it on.
    let reply = b.execute(incoming(deposit(50))).await.unwrap();
    assert!(
        matches!(reply, CommandReply::Accepted { version: 3, .. }),
        "{reply:?}"
    );
    // Only right if `a` sees b's deposit: with a stale 100 it would refuse.
    let reply = a.execute(incoming(withdraw(150))).await.unwrap();
    assert!(
        matches!(reply, CommandReply::Accepted { version: 4, .. }),
        "{reply:?}"
    );
    let reply = b.execute(incoming(withdraw(1))).await.unwrap();
    match reply {
        CommandReply::Rejected { error, .. } => {
            assert_eq!(error.code, ErrorCode::InsufficientFunds)
        }
        other => panic!("b must see a's withdrawal: {other:?}"),
    }
    assert_eq!(a.load::<Account>("warm").await.unwrap().sequence, 4);
    assert!(
        chain_is_clean(&pool).await,
        "hash chain broken across instances"
    );
}

#[test]
fn two_warm_instances_agree_with_a_full_replay() {
    let rt = runtime();
    let pool = rt.block_on(fresh_pool());
    let instances = [instance(&pool), instance(&pool)];
    let replay = PersistedEventStore::<_, Account>::new_event_store(PostgresEventRepository::new(
        pool.clone(),
    ));
    let case = std::sync::atomic::AtomicU32::new(0);
    let config = ProptestConfig {
        cases: 16,
        ..ProptestConfig::default()
    };
    proptest!(config, |(commands in prop::collection::vec((step("p"), any::<bool>()), 1..30))| {
        let id = format!("warm-{}", case.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
        let open = AccountCommand::Open(OpenAccount {
            account_id: id.clone(), owner: "o".into(), currency: "EUR".into(),
            metadata: Default::default(),
        });
        rt.block_on(async {
            instances[0].execute(incoming(open)).await.unwrap();
            let mut accepted = 1usize;
            for (command, on_second) in commands {
                let executor = &instances[usize::from(on_second)];
                if let Ok(CommandReply::Accepted { .. }) = executor.execute(incoming(retarget(command, &id))).await {
                    accepted += 1;
                }
            }
            let full = replay.load_aggregate(&id).await.unwrap();
            for executor in &instances {
                let warm = executor.load::<Account>(&id).await.unwrap();
                prop_assert_eq!(&warm.aggregate, &full.aggregate);
                prop_assert_eq!(warm.sequence, accepted);
            }
            Ok(())
        })?;
    });
    assert!(
        rt.block_on(chain_is_clean(&pool)),
        "hash chain broken across instances"
    );
}

#[tokio::test]
async fn racing_commands_on_one_account_commit_in_groups_exactly_once() {
    let pool = fresh_pool().await;
    let executor = std::sync::Arc::new(instance(&pool));
    let open = AccountCommand::Open(OpenAccount {
        account_id: "hot".into(),
        owner: "o".into(),
        currency: "EUR".into(),
        metadata: Default::default(),
    });
    executor.execute(incoming(open)).await.unwrap();
    // 400 commands at once: deposits of 3, withdrawals of 5 (some refused for funds), and every
    // tenth command sent twice under the same id.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..400i64 {
        let command = if i % 2 == 0 {
            AccountCommand::Deposit(Deposit {
                account_id: "hot".into(),
                amount: 3,
                reference: String::new(),
                channel: Default::default(),
            })
        } else {
            AccountCommand::Withdraw(Withdraw {
                account_id: "hot".into(),
                amount: 5,
                reference: String::new(),
            })
        };
        let first = incoming(command);
        let copies = if i % 10 == 0 { 2 } else { 1 };
        for _ in 0..copies {
            let (executor, command) = (executor.clone(), first.clone());
            tasks.spawn(async move { (i, executor.execute(command).await.unwrap()) });
        }
    }
    let mut replies: std::collections::HashMap<uuid::Uuid, CommandReply> = Default::default();
    let (mut balance, mut versions) = (0i64, Vec::new());
    while let Some(joined) = tasks.join_next().await {
        let (i, reply) = joined.unwrap();
        if let Some(earlier) = replies.get(&reply.command_id()) {
            assert_eq!(earlier, &reply, "a repeated id must get the first reply");
            continue;
        }
        match &reply {
            CommandReply::Accepted { version, .. } => {
                versions.push(*version);
                balance += if i % 2 == 0 { 3 } else { -5 };
            }
            CommandReply::Rejected { error, .. } => {
                assert_eq!(error.code, ErrorCode::InsufficientFunds, "{reply:?}");
                assert!(i % 2 == 1);
            }
        }
        replies.insert(reply.command_id(), reply);
    }
    assert_eq!(replies.len(), 400);
    versions.sort_unstable();
    let expected: Vec<u64> = (2..2 + versions.len() as u64).collect();
    assert_eq!(
        versions, expected,
        "each accepted command got its own version"
    );
    let state = executor.load::<Account>("hot").await.unwrap();
    assert_eq!(state.aggregate.balance, balance);
    assert!(balance >= 0);
    let logged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM command_log WHERE aggregate_id = 'hot'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(logged, 401, "one log row per command id");
    assert!(
        chain_is_clean(&pool).await,
        "hash chain broken by grouped commits"
    );
}
