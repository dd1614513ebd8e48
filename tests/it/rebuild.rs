//! `tally projections rebuild` while commands and reads go on, and old event versions through
//! every read path (load, projection, verify, state, rebuild).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use domain::hash_chain::{self, ChainedEvent};
use serde_json::{Value, json};
use sqlx::Connection;
use tests::TestApp;
use tests::client::accepted;
use tests::tally_cli::stdout;

/// Every row of the accounts projection's tables, in a stable order, as JSON text.
async fn read_model_rows(app: &TestApp) -> Vec<String> {
    let mut rows = Vec::new();
    for sql in [
        "SELECT (to_jsonb(a) - 'feed_partition' - 'feed_position')::text FROM accounts a ORDER BY account_id",
        "SELECT (to_jsonb(e) - 'feed_partition' - 'feed_position')::text FROM account_entries e ORDER BY account_id, sequence",
        "SELECT to_jsonb(t)::text FROM currency_totals t ORDER BY currency",
        "SELECT to_jsonb(v)::text FROM projection_versions v WHERE projection = 'accounts' ORDER BY aggregate_id",
    ] {
        let part: Vec<String> = sqlx::query_scalar(sql).fetch_all(&app.db).await.unwrap();
        rows.extend(part);
    }
    rows
}

/// The indexes and constraints of the accounts projection's tables, by name and definition.
async fn read_model_schema(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT indexname || ': ' || indexdef FROM pg_indexes
         WHERE schemaname = current_schema()
           AND tablename IN ('accounts', 'account_entries', 'currency_totals')
         UNION ALL
         SELECT conrelid::regclass::text || ' ' || conname || ': ' || pg_get_constraintdef(oid)
         FROM pg_constraint
         WHERE conrelid IN ('accounts'::regclass, 'account_entries'::regclass, 'currency_totals'::regclass)
         ORDER BY 1",
    )
    .fetch_all(&app.db)
    .await
    .unwrap()
}

/// Waits until the projection has applied every event in the store.
async fn wait_caught_up(app: &TestApp) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (stored, applied): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM events WHERE aggregate_type = 'account'),
                    (SELECT COALESCE(sum(version), 0)::bigint FROM projection_versions WHERE projection = 'accounts')",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        if stored == applied {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "projection stuck at {applied}/{stored}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn rebuild_under_load_never_fails_a_read_and_ends_equal_to_live() {
    let app = Arc::new(TestApp::spawn().await);
    const ACCOUNTS: usize = 12;
    for i in 0..ACCOUNTS {
        let id = format!("rb-{i}");
        accepted(
            &app.send(
                "account.open",
                json!({"account_id": id, "owner": "o", "currency": if i % 2 == 0 { "EUR" } else { "USD" }}),
            )
            .await,
        );
        for n in 0..40 {
            accepted(
                &app.send(
                    "account.deposit",
                    json!({"account_id": id, "amount": 10 + n}),
                )
                .await,
            );
        }
    }
    wait_caught_up(&app).await;

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU32::new(0));
    // Writers: deposits and withdrawals across all accounts for the whole rebuild.
    let writer = {
        let (app, stop, written) = (Arc::clone(&app), Arc::clone(&stop), Arc::clone(&written));
        tokio::spawn(async move {
            let mut sent = 0u32;
            while !stop.load(Ordering::Relaxed) && sent < 3_000 {
                let id = format!("rb-{}", sent as usize % ACCOUNTS);
                let command = if sent.is_multiple_of(3) {
                    "account.withdraw"
                } else {
                    "account.deposit"
                };
                let reply = app
                    .send(command, json!({"account_id": id, "amount": 1 + sent % 7}))
                    .await;
                accepted(&reply);
                sent += 1;
                written.store(sent, Ordering::Relaxed);
            }
            sent
        })
    };
    // Readers: every read answers 200 and no account's version ever goes back.
    let reader = {
        let (app, stop) = (Arc::clone(&app), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut seen: HashMap<String, i64> = HashMap::new();
            let mut reads = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("rb-{}", reads as usize % ACCOUNTS);
                let response = app.http_get(&format!("/v1/accounts/{id}")).await;
                assert_eq!(response.status(), 200, "read {reads} of {id} failed");
                let body: Value = response.json().await.unwrap();
                let version = body["version"].as_i64().unwrap();
                let last = seen.insert(id.clone(), version).unwrap_or(0);
                assert!(version >= last, "{id} went back from {last} to {version}");
                let list = app.http_get("/v1/totals").await;
                assert_eq!(list.status(), 200);
                reads += 1;
            }
            reads
        })
    };

    let schema_before = read_model_schema(&app).await;
    assert!(schema_before.len() >= 6, "{schema_before:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let table_before: i64 = sqlx::query_scalar("SELECT 'accounts'::regclass::oid::bigint")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let written_before = written.load(Ordering::Relaxed);
    let rebuilt = app
        .tally(&["--json", "projections", "rebuild", "accounts"])
        .await;
    let written_during = written.load(Ordering::Relaxed) - written_before;
    assert_eq!(rebuilt.status.code(), Some(0), "{rebuilt:?}");
    let report: Value = serde_json::from_slice(&rebuilt.stdout).unwrap();
    assert!(report["events"].as_u64().unwrap() >= 12 * 41, "{report}");
    assert!(
        written_during > 0,
        "no command ran during the rebuild: {report}"
    );
    let table_after: i64 = sqlx::query_scalar("SELECT 'accounts'::regclass::oid::bigint")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_ne!(
        table_before, table_after,
        "the rebuilt table was not swapped in"
    );
    eprintln!("rebuild: {report}; {written_during} commands during it");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = writer.await.unwrap();
    let reads = reader.await.unwrap();
    assert!(sent > 0 && reads > 0, "sent {sent}, reads {reads}");

    // Live consumption resumed on the swapped-in tables…
    wait_caught_up(&app).await;
    let live = read_model_rows(&app).await;
    // …and equals a rebuild from scratch now that nothing moves.
    let again = app.tally(&["projections", "rebuild", "accounts"]).await;
    assert_eq!(again.status.code(), Some(0), "{again:?}");
    assert_eq!(read_model_rows(&app).await, live);
    // The swapped-in tables carry the live ones' indexes and constraints, names included.
    assert_eq!(read_model_schema(&app).await, schema_before);
    let verify = app.tally(&["audit", "verify"]).await;
    assert_eq!(verify.status.code(), Some(0), "{}", stdout(&verify));

    let status = app.tally(&["--json", "projections", "status"]).await;
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status[0]["projection"], "accounts", "{status}");
    assert_eq!(status[0]["lag"], 0, "{status}");
    assert_eq!(status[0]["parked_aggregates"], 0);
}

/// Inserts an event row as an older release wrote it, hash chain included.
async fn insert_legacy(
    app: &TestApp,
    id: &str,
    sequence: i64,
    event_type: &str,
    payload: Value,
    prev: &[u8; 32],
) -> [u8; 32] {
    let metadata = serde_json::to_value(
        domain::EventMetadata::for_command(
            uuid::Uuid::new_v4(),
            "legacy-import",
            chrono::Utc::now(),
        )
        .to_map(),
    )
    .unwrap();
    let hash = hash_chain::event_hash(
        prev,
        &ChainedEvent {
            aggregate_type: "account",
            aggregate_id: id,
            sequence: sequence as u64,
            event_type,
            event_version: "1.0",
            payload: &payload,
            metadata: &metadata,
        },
    );
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, hash)
         VALUES ('account', $1, $2, $3, '1.0', $4, $5, $6)",
    )
    .bind(id)
    .bind(sequence)
    .bind(event_type)
    .bind(&payload)
    .bind(&metadata)
    .bind(hash.to_vec())
    .execute(&app.db)
    .await
    .unwrap();
    hash
}

#[tokio::test]
async fn version_1_deposits_load_project_verify_and_rebuild() {
    let app = TestApp::spawn().await;
    let opened = insert_legacy(
        &app,
        "legacy",
        1,
        "AccountOpened",
        json!({"AccountOpened": {"account_id": "legacy", "owner": "old", "currency": "EUR"}}),
        &hash_chain::GENESIS,
    )
    .await;
    insert_legacy(
        &app,
        "legacy",
        2,
        "MoneyDeposited",
        json!({"MoneyDeposited": {"amount": 700, "reference": "v1", "balance_after": 700}}),
        &opened,
    )
    .await;

    // The command path loads it (upcast) and continues the chain.
    let reply = app
        .send(
            "account.withdraw",
            json!({"account_id": "legacy", "amount": 200}),
        )
        .await;
    assert_eq!(accepted(&reply).1, 3);
    let reply = app
        .send(
            "account.deposit",
            json!({"account_id": "legacy", "amount": 5, "channel": "cash"}),
        )
        .await;
    assert_eq!(accepted(&reply).1, 4);
    wait_caught_up(&app).await;

    // The projection read it from the stream (upcast there too).
    let account: Value = app
        .http_get("/v1/accounts/legacy")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(account["balance"], 505, "{account}");
    let state: Value = app
        .http_get("/v1/audit/account/legacy/state?version=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(state["state"]["balance"], 700, "{state}");
    let events: Value = app
        .http_get("/v1/audit/account/legacy/events")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        events["items"][1]["event_version"], "1.0",
        "shown as stored"
    );
    assert_eq!(events["items"][3]["event_version"], "2.0");
    assert_eq!(
        events["items"][3]["payload"]["MoneyDeposited"]["channel"],
        "cash"
    );

    let verify = app.tally(&["audit", "verify"]).await;
    assert_eq!(verify.status.code(), Some(0), "{}", stdout(&verify));
    let live = read_model_rows(&app).await;
    let rebuilt = app.tally(&["projections", "rebuild", "accounts"]).await;
    assert_eq!(rebuilt.status.code(), Some(0), "{rebuilt:?}");
    assert_eq!(read_model_rows(&app).await, live);
}

#[tokio::test]
async fn rebuild_refuses_what_it_cannot_do_safely_and_changes_nothing() {
    let app = TestApp::spawn().await;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "keep", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    wait_caught_up(&app).await;
    let before = read_model_rows(&app).await;
    let table: i64 = sqlx::query_scalar("SELECT 'accounts'::regclass::oid::bigint")
        .fetch_one(&app.db)
        .await
        .unwrap();

    let unknown = app.tally(&["projections", "rebuild", "nope"]).await;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown projection `nope`"));

    // Another rebuild holds the projection's rebuild lock.
    let mut holder = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query(
        "SELECT pg_advisory_lock(hashtextextended('tally.projection.rebuild:accounts', 0))",
    )
    .execute(&mut holder)
    .await
    .unwrap();
    let busy = app.tally(&["projections", "rebuild", "accounts"]).await;
    assert_eq!(busy.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("already running"),
        "{busy:?}"
    );
    holder.close().await.unwrap();

    // A dead-lettered account: the live model deliberately lags it.
    sqlx::query(
        "INSERT INTO projection_parked (projection, aggregate_type, aggregate_id, sequence, event, error, attempts)
         VALUES ('accounts', 'account', 'keep', 2, '{}', 'test', 5)",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let parked = app.tally(&["projections", "rebuild", "accounts"]).await;
    assert_eq!(parked.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&parked.stderr).contains("dead-lettered"),
        "{parked:?}"
    );

    let after: i64 = sqlx::query_scalar("SELECT 'accounts'::regclass::oid::bigint")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(table, after);
    assert_eq!(read_model_rows(&app).await, before);
}
