//! Following the PostgreSQL primary: a URL listing several hosts (libpq's form, as
//! `pg_autoctl show uri` prints it) gets a pool on the primary whatever the order, and the same
//! pool writes again on the standby once it is promoted, without a restart. With synchronous
//! replication no acknowledged commit is lost across the switch.
//!
//! Real servers: a durable primary with `synchronous_standby_names = '*'` and a hot standby
//! made from it by `pg_basebackup -R`, streaming.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use platform::config::PostgresConfig;
use sqlx::postgres::PgPool;
use sqlx::{Connection, PgConnection};
use tests::postgres_server::PostgresServer;

fn test_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tally-test-{}-{name}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A primary and its synchronous hot standby, streaming, with table `t` on both.
struct Pair {
    primary: PostgresServer,
    standby: PostgresServer,
}

impl Pair {
    /// Must run on the test's own thread (not a spawned task): the servers die with the thread
    /// that started them.
    async fn start(name: &str) -> Pair {
        let dir = test_dir(name);
        std::fs::create_dir_all(dir.join("primary")).unwrap();
        std::fs::create_dir_all(dir.join("standby")).unwrap();
        let primary = PostgresServer::start_sync_primary(&dir.join("primary")).unwrap();
        let standby = primary.start_standby(&dir.join("standby")).unwrap();
        let pair = Pair { primary, standby };
        pair.wait_sync().await;
        let mut conn = PgConnection::connect(&pair.primary.url("postgres"))
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (id bigint PRIMARY KEY, port int NOT NULL)")
            .execute(&mut conn)
            .await
            .unwrap();
        pair
    }

    /// Until the primary reports the standby as its synchronous one.
    async fn wait_sync(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut conn = PgConnection::connect(&self.primary.url("postgres"))
            .await
            .unwrap();
        loop {
            let sync: Option<String> = sqlx::query_scalar(
                "SELECT sync_state FROM pg_stat_replication WHERE sync_state = 'sync'",
            )
            .fetch_optional(&mut conn)
            .await
            .unwrap();
            if sync.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the standby never became synchronous"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// libpq's multi-host URL, the standby listed first.
    fn url_standby_first(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write&sslmode=disable",
            self.standby.port, self.primary.port
        )
    }
}

fn config(url: String) -> PostgresConfig {
    PostgresConfig {
        url: url.into(),
        pool_max: 4,
        acquire_timeout_ms: 2_000,
        statement_timeout_ms: 5_000,
    }
}

/// Inserts row `id` through `pool`; the port of the server that took it.
async fn insert(pool: &PgPool, id: i64) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("INSERT INTO t (id, port) VALUES ($1, inet_server_port()) RETURNING port")
        .bind(id)
        .fetch_one(pool)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_listing_the_standby_first_writes_to_the_primary() {
    let pair = Pair::start("pf-order").await;
    let pool = platform::db::connect(&config(pair.url_standby_first()), "failover-test")
        .await
        .unwrap();
    // Every connection the pool opens (all four at once) is on the primary.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(pool.acquire().await.unwrap());
    }
    for conn in &mut held {
        let (port, in_recovery): (i32, bool) =
            sqlx::query_as("SELECT inet_server_port(), pg_is_in_recovery()")
                .fetch_one(&mut **conn)
                .await
                .unwrap();
        assert_eq!(port, i32::from(pair.primary.port));
        assert!(!in_recovery);
    }
    drop(held);
    assert_eq!(
        insert(&pool, 1).await.unwrap(),
        i32::from(pair.primary.port)
    );
    // A URL naming only the standby with read-write refuses to start rather than hand out
    // read-only sessions.
    let standby_only = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?target_session_attrs=read-write",
        pair.standby.port
    );
    let error = platform::db::connect(&config(standby_only), "failover-test")
        .await
        .unwrap_err();
    assert!(
        matches!(error, platform::db::DbError::Primary(_)),
        "{error:?}"
    );
    pool.close().await;
}

/// kill -9 the primary while rows commit in a tight loop, promote the standby: every commit the
/// primary acknowledged is on the new primary, and the same pool writes there within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_follows_a_promoted_standby_and_no_acknowledged_commit_is_lost() {
    let mut pair = Pair::start("pf-promote").await;
    let pool = platform::db::connect(&config(pair.url_standby_first()), "failover-test")
        .await
        .unwrap();

    // One writer, one row per commit, recording each acknowledged id, until a commit fails.
    let acknowledged = Arc::new(Mutex::new(Vec::<i64>::new()));
    let writer = {
        let (pool, acknowledged) = (pool.clone(), Arc::clone(&acknowledged));
        tokio::spawn(async move {
            for id in 1_000_000i64.. {
                if insert(&pool, id).await.is_err() {
                    return;
                }
                acknowledged.lock().unwrap().push(id);
            }
        })
    };
    // Until well into the loop, then the crash, mid-stream.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acknowledged.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "the writer is too slow");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pair.primary.kill();
    tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("the writer sees the crash")
        .unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();

    pair.standby.promote().unwrap();
    let promoted = Instant::now();

    // No acknowledged commit lost: synchronous replication flushed each on the standby first.
    let mut conn = PgConnection::connect(&pair.standby.url("postgres"))
        .await
        .unwrap();
    let present: Vec<i64> = sqlx::query_scalar("SELECT id FROM t WHERE id = ANY($1)")
        .bind(&acknowledged)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let present: std::collections::HashSet<i64> = present.into_iter().collect();
    let lost: Vec<&i64> = acknowledged
        .iter()
        .filter(|id| !present.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged commits lost, e.g. {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(5)]
    );

    // The same pool, no restart, writes on the new primary.
    let deadline = promoted + Duration::from_secs(10);
    let mut id = 1i64;
    let port = loop {
        match insert(&pool, id).await {
            Ok(port) => break port,
            Err(error) => assert!(
                Instant::now() < deadline,
                "still no write 10 s after the promotion: {error}"
            ),
        }
        id += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = promoted.elapsed();
    assert_eq!(port, i32::from(pair.standby.port));
    eprintln!(
        "{} commits acknowledged before the kill, all on the standby; first write on the new primary {} ms after the promotion",
        acknowledged.len(),
        took.as_millis()
    );
    // And every connection it hands out from now on is on the new primary.
    for _ in 0..8 {
        let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(!in_recovery);
    }
    pool.close().await;
}

/// `account.open` for `account` over NATS with the admin token: the reply's `status`, if one came.
async fn open_account(client: &async_nats::Client, prefix: &str, account: &str) -> Option<String> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Authorization",
        format!("Bearer {}", tests::app::admin_token()).as_str(),
    );
    let body = serde_json::json!({"account_id": account, "owner": "o", "currency": "EUR"});
    let reply = tokio::time::timeout(
        Duration::from_secs(8),
        client.request_with_headers(
            format!("{prefix}.cmd.account.open"),
            headers,
            serde_json::to_vec(&body).unwrap().into(),
        ),
    )
    .await
    .ok()?
    .ok()?;
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
    reply["status"].as_str().map(str::to_owned)
}

/// A command-service in this process on `pair` (its URL listing the standby first) and the
/// shared NATS; its prefix, a NATS client, and its shutdown and task.
struct CommandService {
    prefix: String,
    client: async_nats::Client,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl CommandService {
    async fn start(pair: &Pair) -> CommandService {
        use clap::Parser;
        tests::init_test_logging();
        let servers = tests::Servers::get();
        let prefix = tests::app::unique_prefix();
        let config = command_service::Config::try_parse_from([
            "command-service".to_owned(),
            format!("--database-url={}", pair.url_standby_first()),
            format!("--nats-url={}", servers.nats_url),
            format!("--subject-prefix={prefix}"),
            "--db-pool-max=4".to_owned(),
            format!("--auth-hs256-secret={}", tests::app::TEST_AUTH_SECRET),
            "--ops-addr=127.0.0.1:0".to_owned(),
        ])
        .unwrap();
        let service = command_service::Application::build(config).await.unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(service.run(shutdown.clone()));
        let client = async_nats::connect(&servers.nats_url).await.unwrap();
        CommandService {
            prefix,
            client,
            shutdown,
            task,
        }
    }

    async fn open(&self, account: &str) -> Option<String> {
        open_account(&self.client, &self.prefix, account).await
    }

    /// Sends `account.open` for fresh accounts until one is accepted (within 15 s of
    /// `since`); the account's name and when.
    async fn open_until_accepted(&self, since: Instant) -> (String, Duration) {
        let mut n = 0;
        loop {
            n += 1;
            let account = format!("after-{n}");
            let status = self.open(&account).await;
            if status.as_deref() == Some("accepted") {
                return (account, since.elapsed());
            }
            assert!(
                since.elapsed() < Duration::from_secs(15),
                "no command accepted 15 s after the promotion: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

/// A running command-service given the multi-host URL takes commands again on the promoted
/// standby, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_command_service_accepts_commands_again_after_the_promotion() {
    let mut pair = Pair::start("pf-service").await;
    let service = CommandService::start(&pair).await;
    assert_eq!(service.open("before").await.as_deref(), Some("accepted"));
    // The CLI takes the same URL (`tally dlq` does not yet: it connects without
    // `cli::database`).
    let output = tokio::process::Command::new(tests::binaries::workspace_binary("tally"))
        .args(["audit", "digest"])
        .env("TALLY_DATABASE_URL", pair.url_standby_first())
        .kill_on_drop(true)
        .output()
        .await
        .expect("tally binary (cargo build --workspace)");
    assert!(
        output.status.success(),
        "tally audit digest: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    pair.primary.kill();
    pair.standby.promote().unwrap();
    let (account, took) = service.open_until_accepted(Instant::now()).await;
    eprintln!(
        "command accepted {} ms after the promotion",
        took.as_millis()
    );
    let mut conn = PgConnection::connect(&pair.standby.url("postgres"))
        .await
        .unwrap();
    let opened: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id IN ('before', $1)")
            .bind(&account)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(opened, 2, "both accounts' events are on the new primary");
    service.stop().await;
}

/// The relay publishes events committed on the promoted standby: its leader-lock session comes
/// from the pool each term (it was opened from options fixed at start, which pointed at the dead
/// primary, and nothing reached the stream after a failover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_events_committed_after_the_promotion() {
    let mut pair = Pair::start("pf-relay").await;
    let service = CommandService::start(&pair).await;
    assert_eq!(service.open("before").await.as_deref(), Some("accepted"));
    pair.primary.kill();
    pair.standby.promote().unwrap();
    let promoted = Instant::now();
    let (account, _) = service.open_until_accepted(promoted).await;
    let subjects = platform::nats::Subjects::new(&service.prefix).unwrap();
    let streams = platform::nats::StreamNames::for_subjects(&subjects);
    let jetstream = async_nats::jetstream::new(service.client.clone());
    let mut stream = jetstream.get_stream(&streams.events).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let messages = stream.info().await.unwrap().state.messages;
        if messages >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the event of {account} never reached the stream ({messages} messages)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "event published {} ms after the promotion",
        promoted.elapsed().as_millis()
    );
    service.stop().await;
}
