//! The accounts projection: read models follow the events exactly once, whatever JetStream
//! delivers twice, and agree with each other.

use std::time::{Duration, Instant};

use serde_json::json;
use tests::TestApp;
use tests::client::accepted;

/// Waits until the projection applied `version` of account `id`.
async fn wait_projected(app: &TestApp, id: &str, version: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let applied: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM projection_versions WHERE projection = 'accounts' AND aggregate_id = $1",
        )
        .bind(id)
        .fetch_optional(&app.db)
        .await
        .unwrap();
        if applied >= Some(version) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} stuck at {applied:?}, want {version}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn accounts_entries_and_totals_follow_the_events() {
    let app = TestApp::spawn().await;
    for (id, currency) in [("a", "EUR"), ("b", "EUR"), ("c", "USD")] {
        accepted(
            &app.send(
                "account.open",
                json!({"account_id": id, "owner": "o", "currency": currency}),
            )
            .await,
        );
    }
    accepted(
        &app.send(
            "account.deposit",
            json!({"account_id": "a", "amount": 100, "reference": "r1"}),
        )
        .await,
    );
    accepted(
        &app.send("account.withdraw", json!({"account_id": "a", "amount": 40}))
            .await,
    );
    accepted(
        &app.send("account.deposit", json!({"account_id": "b", "amount": 7}))
            .await,
    );
    accepted(
        &app.send("account.freeze", json!({"account_id": "b", "reason": "x"}))
            .await,
    );
    accepted(&app.send("account.close", json!({"account_id": "c"})).await);
    wait_projected(&app, "a", 3).await;
    wait_projected(&app, "b", 3).await;
    wait_projected(&app, "c", 2).await;

    let accounts: Vec<(String, i64, String, i64)> = sqlx::query_as(
        "SELECT account_id, balance, status, version FROM accounts ORDER BY account_id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        accounts,
        [
            ("a".into(), 60, "open".into(), 3),
            ("b".into(), 7, "frozen".into(), 3),
            ("c".into(), 0, "closed".into(), 2)
        ]
    );
    let entries: Vec<(i64, String, i64, i64, String)> = sqlx::query_as(
        "SELECT sequence, direction, amount, balance_after, reference FROM account_entries WHERE account_id = 'a' ORDER BY sequence",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        entries,
        [
            (2, "credit".into(), 100, 100, "r1".into()),
            (3, "debit".into(), 40, 60, String::new())
        ]
    );
    let totals: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT currency, open_accounts, total_balance::text FROM currency_totals ORDER BY currency",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        totals,
        [
            ("EUR".into(), 2, "67".into()),
            ("USD".into(), 0, "0".into())
        ]
    );
}

#[tokio::test]
async fn duplicate_deliveries_change_nothing() {
    let app = TestApp::spawn().await;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "d", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    for _ in 0..5 {
        accepted(
            &app.send("account.deposit", json!({"account_id": "d", "amount": 10}))
                .await,
        );
    }
    wait_projected(&app, "d", 6).await;
    // Publish every event again under new message ids (so the stream keeps the copies).
    for event in app.events_in_stream().await {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("replay-{}", event.msg_id).as_str());
        app.jetstream
            .publish_with_headers(
                app.subjects.event("account", "d"),
                headers,
                serde_json::to_vec(&event.message).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Wait until the projection consumed the copies too.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let position: Option<i64> = sqlx::query_scalar(
            "SELECT stream_sequence FROM projection_checkpoints WHERE projection = 'accounts'",
        )
        .fetch_optional(&app.db)
        .await
        .unwrap();
        if position >= Some(12) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "copies not consumed: {position:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (balance, version): (i64, i64) =
        sqlx::query_as("SELECT balance, version FROM accounts WHERE account_id = 'd'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((balance, version), (50, 6));
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM account_entries")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(entries, 5);
    let total: String = sqlx::query_scalar(
        "SELECT total_balance::text FROM currency_totals WHERE currency = 'EUR'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(total, "50");
    app.assert_no_skipped_events().await;
}

const BULK_ACCOUNTS: i64 = 200;
const BULK_EVENTS_PER_ACCOUNT: i64 = 100;

/// 20,000 deterministic events (same ids, payloads and timestamps in every database), written
/// straight into the store; the relay publishes them like any others.
async fn write_bulk_history(app: &TestApp) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at)
         SELECT 'account', 'bulk-' || a, s,
                CASE WHEN s = 1 THEN 'AccountOpened' ELSE 'MoneyDeposited' END, '1.0',
                CASE WHEN s = 1
                     THEN jsonb_build_object('AccountOpened', jsonb_build_object(
                              'account_id', 'bulk-' || a, 'owner', 'owner-' || (a % 7),
                              'currency', CASE WHEN a % 2 = 0 THEN 'EUR' ELSE 'USD' END))
                     ELSE jsonb_build_object('MoneyDeposited', jsonb_build_object(
                              'amount', a, 'reference', 'ref-' || s, 'balance_after', (s - 1) * a))
                END,
                jsonb_build_object('command_id', md5('bulk-' || a || ':' || s)::uuid::text,
                                   'correlation_id', md5('bulk-' || a || ':' || s)::uuid::text,
                                   'causation_id', md5('bulk-' || a || ':' || s)::uuid::text,
                                   'actor', 'bulk', 'schema_version', '1',
                                   'recorded_at', '2026-01-01T00:00:00Z'),
                timestamptz '2026-01-01 00:00:00+00' + (a * 1000 + s) * interval '1 second'
         FROM generate_series(1, $1::bigint) AS a, generate_series(1, $2::bigint) AS s
         ORDER BY a, s",
    )
    .bind(BULK_ACCOUNTS)
    .bind(BULK_EVENTS_PER_ACCOUNT)
    .execute(&app.db)
    .await
    .unwrap();
}

async fn events_applied(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT events_applied FROM projection_checkpoints WHERE projection = 'accounts'",
    )
    .fetch_optional(&app.db)
    .await
    .unwrap()
    .unwrap_or(0)
}

async fn wait_applied(app: &TestApp, count: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while events_applied(app).await < count {
        assert!(
            Instant::now() < deadline,
            "applied {} of {count}",
            events_applied(app).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whole tables, as text, in a stable order.
async fn dump(app: &TestApp) -> Vec<String> {
    let mut out = Vec::new();
    for query in [
        "SELECT (to_jsonb(a) - 'feed_partition' - 'feed_position')::text FROM (SELECT * FROM accounts ORDER BY account_id) a",
        "SELECT (to_jsonb(e) - 'feed_partition' - 'feed_position')::text FROM (SELECT * FROM account_entries ORDER BY account_id, sequence) e",
        "SELECT row_to_json(t)::text FROM (SELECT * FROM currency_totals ORDER BY currency) t",
    ] {
        let rows: Vec<String> = sqlx::query_scalar(query).fetch_all(&app.db).await.unwrap();
        out.extend(rows);
    }
    out
}

#[tokio::test]
async fn kill_9_during_catch_up_then_restart_equals_a_fresh_run() {
    let total = BULK_ACCOUNTS * BULK_EVENTS_PER_ACCOUNT;
    // The reference: a fresh database whose projection runs undisturbed from scratch.
    let reference = TestApp::spawn().await;
    write_bulk_history(&reference).await;

    let mut app = TestApp::spawn().await;
    app.stop_projections().await;
    write_bulk_history(&app).await;
    app.wait_for_stream_count(u64::try_from(total).unwrap(), Duration::from_secs(60))
        .await;

    let binary = tests::binaries::workspace_binary("projections");
    let spawn = || {
        std::process::Command::new(&binary)
            .args(app.service_flags())
            .arg("--ops-addr=127.0.0.1:0")
            .env("TALLY_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("projections binary (cargo build --workspace)")
    };
    let mut worker = spawn();
    wait_applied(&app, total / 4, Duration::from_secs(60)).await;
    worker.kill().unwrap(); // SIGKILL mid catch-up
    worker.wait().unwrap();
    let at_kill = events_applied(&app).await;
    assert!(
        at_kill < total,
        "the kill came too late to test anything ({at_kill})"
    );

    let mut worker = spawn();
    wait_applied(&app, total, Duration::from_secs(120)).await;
    wait_applied(&reference, total, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.kill().unwrap();
    worker.wait().unwrap();

    // Exactly once: every event counted once across the crash, none applied twice or skipped.
    assert_eq!(events_applied(&app).await, total);
    assert_eq!(
        dump(&app).await,
        dump(&reference).await,
        "read models differ from a fresh run"
    );
    // And the cross-aggregate model agrees with the per-account one.
    let mismatched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM currency_totals t
         FULL JOIN (SELECT currency, count(*) FILTER (WHERE status <> 'closed') AS n, sum(balance) AS b
                    FROM accounts GROUP BY currency) a USING (currency)
         WHERE t.open_accounts IS DISTINCT FROM a.n OR t.total_balance IS DISTINCT FROM a.b",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(mismatched, 0, "currency_totals disagrees with accounts");
    app.assert_no_skipped_events().await;
    reference.assert_no_skipped_events().await;
}

#[tokio::test]
async fn a_withdrawal_in_its_own_batch_lowers_the_totals() {
    // Regression: a negative delta on an existing totals row must not trip its CHECK.
    let app = TestApp::spawn().await;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "w", "owner": "o", "currency": "SEK"}),
        )
        .await,
    );
    accepted(
        &app.send("account.deposit", json!({"account_id": "w", "amount": 100}))
            .await,
    );
    wait_projected(&app, "w", 2).await;
    accepted(
        &app.send("account.withdraw", json!({"account_id": "w", "amount": 40}))
            .await,
    );
    wait_projected(&app, "w", 3).await;
    accepted(
        &app.send("account.withdraw", json!({"account_id": "w", "amount": 60}))
            .await,
    );
    accepted(&app.send("account.close", json!({"account_id": "w"})).await);
    wait_projected(&app, "w", 5).await;
    let (open, total): (i64, String) = sqlx::query_as(
        "SELECT open_accounts, total_balance::text FROM currency_totals WHERE currency = 'SEK'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((open, total.as_str()), (0, "0"));
}

#[tokio::test]
async fn two_workers_on_one_projection_agree_with_a_single_one() {
    // A second worker on the same projection (as when two instances run): one holds the pin and
    // the other stands by, so an account's events are never split between them, and the result
    // equals a single worker's.
    let total = BULK_ACCOUNTS * BULK_EVENTS_PER_ACCOUNT;
    let reference = TestApp::spawn().await;
    write_bulk_history(&reference).await;
    let app = TestApp::spawn().await;
    let config = <projections::Config as clap::Parser>::try_parse_from(
        std::iter::once("projections".to_owned())
            .chain(app.service_flags())
            .chain([
                "--ops-addr=127.0.0.1:0".to_owned(),
                "--projection-batch-max=50".to_owned(),
            ]),
    )
    .unwrap();
    let second = projections::Application::build(config).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let second = tokio::spawn(second.run(stop.clone()));
    write_bulk_history(&app).await;

    wait_applied(&app, total, Duration::from_secs(180)).await;
    wait_applied(&reference, total, Duration::from_secs(180)).await;
    assert_eq!(events_applied(&app).await, total);
    assert_eq!(
        dump(&app).await,
        dump(&reference).await,
        "two workers diverged from one"
    );
    app.assert_no_skipped_events().await;
    stop.cancel();
    second.await.unwrap().unwrap();
}
