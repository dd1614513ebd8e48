//! A rebuild killed with SIGKILL half way: the live tables are untouched and serving, its locks
//! die with its connections, and the next rebuild cleans up and succeeds.

use std::time::{Duration, Instant};

use domain::hash_chain::{self, ChainedEvent};
use serde_json::{Value, json};
use tests::TestApp;
use tests::binaries::workspace_binary;

/// Writes `accounts` accounts of one opening and nine deposits straight into the store,
/// hash-chained as the command-service writes them (far faster than sending commands).
async fn bulk_history(app: &TestApp, accounts: usize) -> i64 {
    let metadata = serde_json::to_value(
        domain::EventMetadata::for_command(uuid::Uuid::new_v4(), "bulk", chrono::Utc::now())
            .to_map(),
    )
    .unwrap();
    for chunk in (0..accounts).collect::<Vec<_>>().chunks(500) {
        let (mut ids, mut seqs, mut types, mut versions, mut payloads, mut hashes) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for &a in chunk {
            let id = format!("bulk-{a:06}");
            let mut prev = hash_chain::GENESIS;
            for seq in 1..=10i64 {
                let (kind, version, payload) = if seq == 1 {
                    (
                        "AccountOpened",
                        "1.0",
                        json!({"AccountOpened": {"account_id": id, "owner": "bulk", "currency": "EUR"}}),
                    )
                } else {
                    (
                        "MoneyDeposited",
                        "2.0",
                        json!({"MoneyDeposited": {"amount": 10, "reference": "", "balance_after": (seq - 1) * 10, "channel": "cash"}}),
                    )
                };
                prev = hash_chain::event_hash(
                    &prev,
                    &ChainedEvent {
                        aggregate_type: "account",
                        aggregate_id: &id,
                        sequence: seq as u64,
                        event_type: kind,
                        event_version: version,
                        payload: &payload,
                        metadata: &metadata,
                    },
                );
                ids.push(id.clone());
                seqs.push(seq);
                types.push(kind);
                versions.push(version);
                payloads.push(payload);
                hashes.push(prev.to_vec());
            }
        }
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, hash)
             SELECT 'account', t.id, t.seq, t.kind, t.version, t.payload, $7, t.hash
             FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::jsonb[], $6::bytea[])
               AS t(id, seq, kind, version, payload, hash)",
        )
        .bind(&ids)
        .bind(&seqs)
        .bind(&types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&hashes)
        .bind(&metadata)
        .execute(&app.db)
        .await
        .unwrap();
    }
    (accounts * 10) as i64
}

async fn rows(app: &TestApp) -> (i64, i64, Vec<String>) {
    let oid: i64 = sqlx::query_scalar("SELECT 'accounts'::regclass::oid::bigint")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM account_entries")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let totals: Vec<String> =
        sqlx::query_scalar("SELECT to_jsonb(t)::text FROM currency_totals t ORDER BY currency")
            .fetch_all(&app.db)
            .await
            .unwrap();
    (oid, entries, totals)
}

#[tokio::test]
async fn a_rebuild_killed_half_way_changes_nothing_and_the_next_one_succeeds() {
    let app = TestApp::spawn().await;
    let total = bulk_history(&app, 4_000).await;
    // The live projection applies all of it first.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let applied: i64 = sqlx::query_scalar(
            "SELECT COALESCE(sum(version), 0)::bigint FROM projection_versions WHERE projection = 'accounts'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        if applied == total {
            break;
        }
        assert!(Instant::now() < deadline, "projection at {applied}/{total}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = rows(&app).await;

    let mut rebuild = tokio::process::Command::new(workspace_binary("tally"))
        .args(["projections", "rebuild", "accounts"])
        .env("TALLY_DATABASE_URL", &app.db_url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Kill it once the shadow tables hold part of the history.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Fails (so 0) until the rebuild has created its shadow schema.
        let shadow_rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tally_rebuild_accounts.accounts")
                .fetch_one(&app.db)
                .await
                .unwrap_or(0);
        if shadow_rows > 0 {
            break;
        }
        assert!(
            rebuild.try_wait().unwrap().is_none(),
            "the rebuild finished before it could be killed"
        );
        assert!(
            Instant::now() < deadline,
            "the rebuild never started copying"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        rebuild.try_wait().unwrap().is_none(),
        "the rebuild finished before it could be killed"
    );
    rebuild.kill().await.unwrap(); // SIGKILL
    rebuild.wait().await.unwrap();

    assert_eq!(rows(&app).await, before, "the live tables changed");
    let response = app.http_get("/v1/accounts/bulk-000042").await;
    assert_eq!(response.status(), 200);
    let account: Value = response.json().await.unwrap();
    assert_eq!(account["balance"], 90);

    // The killed client's server session may take a moment to notice and free its lock.
    let deadline = Instant::now() + Duration::from_secs(15);
    let again = loop {
        let again = app
            .tally(&["--json", "projections", "rebuild", "accounts"])
            .await;
        let busy = String::from_utf8_lossy(&again.stderr).contains("already running");
        if !busy || Instant::now() > deadline {
            break again;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(again.status.code(), Some(0), "{again:?}");
    let after = rows(&app).await;
    assert_ne!(after.0, before.0, "swapped in");
    assert_eq!((after.1, &after.2), (before.1, &before.2));
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tally_rebuild_%' OR nspname LIKE 'tally_retired_%'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(leftovers, 0);
}
