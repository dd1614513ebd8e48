//! Commits shared across aggregates (`repository::batch_writer`) and decisions on in-memory
//! aggregates: many accounts' commands go out in common statements, and neither a stale
//! in-memory account nor a repeated command id spoils the others' commits or gets through.

use std::collections::HashMap;
use std::sync::Arc;

use command_service::executor::{Executor, ExecutorLimits};
use cqrs_es::EventStore;
use cqrs_es::persist::PersistedEventStore;
use domain::account::*;
use domain::{Account, CommandReply};
use postgres_es::PostgresEventRepository;
use sqlx::PgPool;

use super::dead_letters::eventually;
use super::snapshots::{fresh_pool, incoming};

const ACCOUNTS: usize = 24;
const DEPOSITS_EACH: i64 = 10;

fn instance(pool: &PgPool) -> Executor {
    writing_through(event_store::EventStore::new(pool.clone()))
}

fn writing_through(repo: event_store::EventStore) -> Executor {
    Executor::new(
        repo,
        ExecutorLimits {
            conflict_retries_max: 5,
            snapshot_every: 0,
            aggregate_cache_max: 1_000,
            group_commit: true,
            account_queue_max: 1024,
            transfers_at_once: false,
        },
    )
}

fn deposit(account: &str, amount: i64) -> AccountCommand {
    AccountCommand::Deposit(Deposit {
        account_id: account.into(),
        amount,
        reference: String::new(),
        channel: Default::default(),
    })
}

fn accepted(reply: &CommandReply) -> bool {
    matches!(reply, CommandReply::Accepted { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_accounts_share_commits_and_nothing_stale_or_repeated_gets_through() {
    let pool = fresh_pool().await;
    // One statement in flight at a time, so writes that arrive while it runs wait for the next.
    let a = Arc::new(writing_through(
        event_store::EventStore::with_write_statements_max(pool.clone(), 1),
    ));
    let b = instance(&pool);
    let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("acc-{i}")).collect();
    for id in &accounts {
        let open = AccountCommand::Open(OpenAccount {
            account_id: id.clone(),
            owner: "o".into(),
            currency: "EUR".into(),
            metadata: Default::default(),
        });
        assert!(accepted(&a.execute(incoming(open)).await.unwrap()));
    }
    // An accepted command whose id will be sent again below.
    let repeated = incoming(deposit(&accounts[0], 7));
    let first_reply = a.execute(repeated.clone()).await.unwrap();
    assert!(accepted(&first_reply));
    // Every third account moves on behind `a`'s back: `a` holds them at balance 0 in memory.
    let stale: Vec<&String> = accounts.iter().step_by(3).collect();
    for id in &stale {
        assert!(accepted(
            &b.execute(incoming(deposit(id, 100))).await.unwrap()
        ));
    }

    // On `a`, all at once: deposits on every account, the repeated id, and on each stale
    // account a withdrawal only b's deposit pays for. Inserts into `events` wait behind a
    // lock until the first of them is seen waiting, so the rest pile up behind it however
    // slowly this machine schedules the tasks; reads go on.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    let mut expected: HashMap<String, i64> = accounts.iter().map(|id| (id.clone(), 0)).collect();
    *expected.entry(accounts[0].clone()).or_default() += 7;
    for id in &stale {
        *expected.entry((*id).clone()).or_default() += 100 - 60;
        let withdraw = AccountCommand::Withdraw(Withdraw {
            account_id: (*id).clone(),
            amount: 60,
            reference: String::new(),
        });
        let a = a.clone();
        tasks.spawn(async move { ("withdraw", a.execute(incoming(withdraw)).await.unwrap()) });
    }
    for round in 0..DEPOSITS_EACH {
        for id in &accounts {
            *expected.entry(id.clone()).or_default() += round + 1;
            let (a, command) = (a.clone(), incoming(deposit(id, round + 1)));
            tasks.spawn(async move { ("deposit", a.execute(command).await.unwrap()) });
        }
    }
    let a2 = a.clone();
    let again = repeated.clone();
    tasks.spawn(async move { ("repeat", a2.execute(again).await.unwrap()) });
    eventually("an insert waits on the lock", async || {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        waiting > 0
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    blocker.commit().await.unwrap();
    while let Some(joined) = tasks.join_next().await {
        let (what, reply) = joined.unwrap();
        match what {
            "repeat" => assert_eq!(reply, first_reply, "a repeated id gets the first reply"),
            _ => assert!(accepted(&reply), "{what}: {reply:?}"),
        }
    }

    let replay = PersistedEventStore::<_, Account>::new_event_store(PostgresEventRepository::new(
        pool.clone(),
    ));
    for id in &accounts {
        let full = replay.load_aggregate(id).await.unwrap();
        assert_eq!(full.aggregate.balance, expected[id], "{id}");
        let warm = a.load::<Account>(id).await.unwrap();
        assert_eq!(warm.aggregate, full.aggregate, "{id}");
    }
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM command_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    let commands = ACCOUNTS + 1 + stale.len() + ACCOUNTS * DEPOSITS_EACH as usize + stale.len();
    assert_eq!(logged as usize, commands, "one log row per command id");
    // Transactions that wrote events of more than one account: the commits were shared.
    let shared: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT xmin::text FROM events GROUP BY xmin::text
         HAVING count(DISTINCT aggregate_id) > 1) t",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(shared > 0, "no statement carried more than one account");
    let report = audit::verify::verify(&pool, &audit::verify::VerifyOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(report.findings_total, 0, "hash chain or replay findings");
}

/// The path alone (here: commands with an expected version) looks nothing up before deciding:
/// a repeated id must still get its first reply, whether deciding it again would now refuse it
/// or accept it.
#[tokio::test]
async fn a_repeated_id_on_the_path_alone_gets_its_first_reply() {
    let pool = fresh_pool().await;
    let a = instance(&pool);
    let open = AccountCommand::Open(OpenAccount {
        account_id: "alone".into(),
        owner: "o".into(),
        currency: "EUR".into(),
        metadata: Default::default(),
    });
    assert!(accepted(&a.execute(incoming(open)).await.unwrap()));
    let at = |version: u64, command: AccountCommand| {
        let mut incoming = incoming(command);
        incoming.expected_version = Some(version);
        incoming
    };
    let accepted_first = at(1, deposit("alone", 10));
    let first = a.execute(accepted_first.clone()).await.unwrap();
    assert!(
        matches!(first, CommandReply::Accepted { version: 2, .. }),
        "{first:?}"
    );
    // Decided again it would be refused (the account is at 2 now, not 1).
    assert_eq!(a.execute(accepted_first).await.unwrap(), first);

    let refused_first = at(4, deposit("alone", 1_000));
    let refused = a.execute(refused_first.clone()).await.unwrap();
    assert!(
        matches!(refused, CommandReply::Rejected { .. }),
        "{refused:?}"
    );
    for _ in 0..2 {
        assert!(accepted(
            &a.execute(incoming(deposit("alone", 1))).await.unwrap()
        ));
    }
    // Now at 4: decided again it would be accepted, and must not be.
    assert_eq!(a.execute(refused_first).await.unwrap(), refused);
    let state = a.load::<Account>("alone").await.unwrap();
    assert_eq!((state.aggregate.balance, state.sequence), (12, 4));
}

/// Two statements that wait on each other's uncommitted keys deadlock, and PostgreSQL rolls
/// one back (40P01). That is a lost race, not a fault: the command-service decides again on
/// fresh reads instead of answering `internal`.
#[tokio::test]
async fn a_deadlock_between_writers_counts_as_a_lost_race() {
    let pool = fresh_pool().await;
    sqlx::query("CREATE TABLE keys (k int PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let (mut one, mut two) = (pool.begin().await.unwrap(), pool.begin().await.unwrap());
    sqlx::query("INSERT INTO keys VALUES (1)")
        .execute(&mut *one)
        .await
        .unwrap();
    sqlx::query("INSERT INTO keys VALUES (2)")
        .execute(&mut *two)
        .await
        .unwrap();
    // Each now inserts the other's key: each waits for the other to end.
    let (first, second) = tokio::join!(
        sqlx::query("INSERT INTO keys VALUES (2)").execute(&mut *one),
        sqlx::query("INSERT INTO keys VALUES (1)").execute(&mut *two),
    );
    let error = [first, second]
        .into_iter()
        .find_map(Result::err)
        .expect("PostgreSQL ends one of them");
    assert_eq!(
        error.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("40P01"),
        "{error}"
    );
    assert!(matches!(
        event_store::classify(error),
        event_store::StoreError::Conflict
    ));
}
