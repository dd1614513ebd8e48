//! Dependencies failing: PostgreSQL down means a prompt `unavailable`, never a hang, and the
//! service recovers by itself when it returns.

use std::time::{Duration, Instant};

use domain::{CommandReply, ErrorCode};
use serde_json::json;
use tests::TestApp;
use tests::postgres_server::PostgresServer;

#[tokio::test]
async fn postgres_down_answers_unavailable_promptly_and_recovers_without_restart() {
    let dir = std::env::temp_dir().join(format!(
        "tally-test-{}-pgdown-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut postgres = PostgresServer::start_durable(&dir).unwrap();
    let app = TestApp::spawn_with_database(postgres.url("postgres")).await;
    tests::client::accepted(
        &app.send(
            "account.open",
            json!({"account_id": "p", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );

    postgres.kill();
    // Every service says so on /readyz, naming the check.
    for addr in [
        app.command_ops_addr,
        app.projections_ops_addr,
        app.process_manager_ops_addr,
    ] {
        let response = app
            .http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503, "{addr}");
        let report: serde_json::Value = response.json().await.unwrap();
        let postgres_check = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "postgres")
            .cloned()
            .unwrap();
        assert_eq!(postgres_check["ok"], false, "{report}");
    }
    assert_eq!(app.http_get("/readyz").await.status(), 503);
    let command_id = uuid::Uuid::new_v4();
    let deposit = json!({"account_id": "p", "amount": 5});
    let started = Instant::now();
    let reply = app
        .send_with_id("account.deposit", command_id, deposit.clone())
        .await;
    let took = started.elapsed();
    match &reply {
        CommandReply::Rejected { error, .. } => assert_eq!(error.code, ErrorCode::Unavailable),
        other => panic!("expected unavailable, got {other:?}"),
    }
    // Within the command timeout (5 s by default), not a hang.
    assert!(took < Duration::from_secs(6), "took {took:?}");

    postgres.restart().unwrap();
    // The same command id, retried, goes through once PostgreSQL is back: no service restart.
    let deadline = Instant::now() + Duration::from_secs(30);
    let version = loop {
        let reply = app
            .send_with_id("account.deposit", command_id, deposit.clone())
            .await;
        if let CommandReply::Accepted { version, .. } = reply {
            break version;
        }
        assert!(Instant::now() < deadline, "never recovered: {reply:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(version, 2);
    // And the relay recovered too.
    app.wait_for_stream_count(2, Duration::from_secs(20)).await;
    // Ready again everywhere, by itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    for addr in [
        app.command_ops_addr,
        app.projections_ops_addr,
        app.process_manager_ops_addr,
    ] {
        while app
            .http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            != 200
        {
            assert!(Instant::now() < deadline, "{addr} never ready again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// When PostgreSQL ends the services' sessions (a restart, a failover, an operator's
/// `pg_terminate_backend`), the pool's connections are dead. Those that sat idle are checked
/// before use and replaced, so the next commands all go through rather than each dead
/// connection failing one of them with `unavailable`.
#[tokio::test]
async fn connections_ended_by_postgres_while_idle_fail_no_command() {
    let app = TestApp::spawn().await;
    let open = |n: usize| {
        app.send(
            "account.open",
            json!({"account_id": format!("b{n}"), "owner": "o", "currency": "EUR"}),
        )
    };
    // Many aggregates at once, so the pool holds all the connections it may.
    for reply in futures::future::join_all((0..32).map(open)).await {
        tests::client::accepted(&reply);
    }

    let ended: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(ended > 0);
    // Longer than a connection may sit idle unchecked (250 ms, `platform::db`), and short
    // enough that the services' own background queries have not yet met every dead one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replies = futures::future::join_all((32..64).map(open)).await;
    for (n, reply) in replies.iter().enumerate() {
        assert!(
            matches!(reply, CommandReply::Accepted { .. }),
            "command {n} after the sessions ended: {reply:?}"
        );
    }
}
