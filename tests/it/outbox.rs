//! The outbox relay: commit-safe order, exactly once, and recovery when the stream is behind
//! or ahead of the relay's checkpoint.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use tests::TestApp;
use tests::client::{StoredEvent, accepted};

/// A duplicate window the tests can outlast: restarting after it, only the relay's own
/// reconciliation keeps a re-publication out of the stream (at 2 minutes, dedup would hide it).
const SHORT_WINDOW: &str = "--nats-duplicate-window-ms=1000";

/// Longer than [`SHORT_WINDOW`], with margin for the server's purge of expired ids.
const PAST_THE_WINDOW: Duration = Duration::from_millis(2_500);

fn metadata() -> serde_json::Value {
    let m = domain::EventMetadata::for_command(uuid::Uuid::new_v4(), "test", chrono::Utc::now());
    serde_json::to_value(m.to_map()).unwrap()
}

#[tokio::test]
async fn a_transaction_that_commits_late_is_published_not_skipped() {
    let app = TestApp::spawn().await;
    // Transaction A writes first (takes the lower global_position) but commits last.
    let mut slow = app.db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('account', 'late', 1, 'AccountOpened', '1.0', $1, $2)",
    )
    .bind(json!({"AccountOpened": {"account_id": "late", "owner": "o", "currency": "EUR"}}))
    .bind(metadata())
    .execute(&mut *slow)
    .await
    .unwrap();

    // Transaction B commits while A is open.
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "early", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    let b_committed_at = db_now(&app).await;
    // B is held back while A (an older transaction) is still running: the relay has read the
    // outbox twice since B committed (the second read starts only after the first batch was
    // published), and the stream is still empty ...
    relay_read_twice_since(&app, b_committed_at).await;
    assert_eq!(app.events_in_stream_count().await, 0);

    slow.commit().await.unwrap();
    // ... and once A commits, both are published, A first (transaction order).
    app.wait_for_stream_count(2, Duration::from_secs(10)).await;
    let ids: Vec<_> = app
        .events_in_stream()
        .await
        .into_iter()
        .map(|e| e.message.aggregate_id)
        .collect();
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, tx_id::text, global_position FROM events ORDER BY global_position",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(ids, ["late", "early"], "stored rows: {rows:?}");
}

#[tokio::test]
async fn restarting_with_a_lagging_checkpoint_publishes_nothing_twice() {
    let mut app = TestApp::spawn_with_flags(&[SHORT_WINDOW]).await;
    for i in 0..20 {
        accepted(
            &app.send(
                "account.open",
                json!({"account_id": format!("r{i}"), "owner": "o", "currency": "EUR"}),
            )
            .await,
        );
    }
    app.wait_for_stream_count(20, Duration::from_secs(10)).await;
    app.stop_command_service().await;
    // As if the relay had crashed after publishing but before it ever saved its checkpoint.
    sqlx::query(
        "UPDATE relay_checkpoints SET tx_id = '0', global_position = 0, stream_sequence = 0",
    )
    .execute(&app.db)
    .await
    .unwrap();
    // Restarting after the duplicate window: the stream no longer drops re-publications.
    tokio::time::sleep(PAST_THE_WINDOW).await;
    app.start_command_service(&[]).await;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "after", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    // The relay publishes in outbox order, so a re-published event would precede `after`.
    let stream = wait_for_aggregate_in_stream(&app, "after").await;
    let mut ids: Vec<_> = stream.iter().map(|e| e.msg_id.clone()).collect();
    assert_eq!(ids.len(), 21, "stream: {ids:?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 21, "an event was published twice");
}

/// Issue 21, finding 4: one publish of a pipelined batch fails while later ones could be
/// stored. Nothing may be skipped (the account's projection would stall on the gap), nothing
/// published twice, and each aggregate's events reach the stream in their order, also when the
/// relay restarts after the duplicate window.
#[tokio::test]
async fn a_publish_failing_mid_batch_is_not_skipped_even_after_the_duplicate_window() {
    let mut app = TestApp::spawn_with_flags(&[SHORT_WINDOW]).await;
    app.stop_command_service().await;
    // An open transaction with an xid holds the relay back (the xmin guard), so that all the
    // events below reach it in one batch.
    let mut hold = app.db.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *hold)
        .await
        .unwrap();
    // The 3rd publication (c's opening) is rejected by JetStream; c's deposits come later in
    // the same batch.
    app.start_command_service_adjusted(&[], |config| config.relay_fail_publish = Some(3))
        .await;
    let accounts = ["a", "b", "c"];
    for id in accounts {
        accepted(
            &app.send(
                "account.open",
                json!({"account_id": id, "owner": "o", "currency": "EUR"}),
            )
            .await,
        );
    }
    for amount in 1..=2 {
        for id in accounts {
            accepted(
                &app.send(
                    "account.deposit",
                    json!({"account_id": id, "amount": amount}),
                )
                .await,
            );
        }
    }
    assert_eq!(app.events_in_stream_count().await, 0, "held back");
    hold.rollback().await.unwrap();
    // The batch went out and the injected failure happened (the two events before it are
    // stored whatever the relay does next) ...
    app.wait_for_stream_count(2, Duration::from_secs(10)).await;
    // ... then the relay restarts after the duplicate window.
    app.stop_command_service().await;
    tokio::time::sleep(PAST_THE_WINDOW).await;
    app.start_command_service(&[]).await;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "marker", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    let stream = wait_for_aggregate_in_stream(&app, "marker").await;

    // Every stored event is in the stream, once.
    let stored: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, sequence FROM events ORDER BY global_position",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let mut expected: Vec<String> = stored
        .iter()
        .map(|(kind, id, seq)| format!("{kind}:{id}:{seq}"))
        .collect();
    let mut published: Vec<String> = stream.iter().map(|e| e.msg_id.clone()).collect();
    expected.sort();
    published.sort();
    assert_eq!(
        published, expected,
        "the stream must hold every stored event once"
    );
    // In each aggregate's order.
    let mut per_aggregate: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in &stream {
        per_aggregate
            .entry(event.message.aggregate_id.clone())
            .or_default()
            .push(event.message.sequence);
    }
    for (id, sequences) in &per_aggregate {
        let in_order: Vec<u64> = (1..=sequences.len() as u64).collect();
        assert_eq!(sequences, &in_order, "events of {id} out of order");
    }
    // And the projection catches up with every account.
    wait_for_versions(&app, &[("a", 3), ("b", 3), ("c", 3), ("marker", 1)]).await;
    app.assert_no_skipped_events().await;
}

#[tokio::test]
async fn commands_are_accepted_while_the_stream_is_gone_and_published_when_it_returns() {
    let app = TestApp::spawn().await;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "before", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    app.wait_for_stream_count(1, Duration::from_secs(10)).await;

    // JetStream loses the events stream (data loss, or the stream is unavailable).
    app.jetstream
        .delete_stream(&app.streams.events)
        .await
        .unwrap();
    for i in 0..5 {
        accepted(
            &app.send(
                "account.open",
                json!({"account_id": format!("during{i}"), "owner": "o", "currency": "EUR"}),
            )
            .await,
        );
    }
    // It comes back empty: the relay re-derives it from PostgreSQL, the source of truth.
    platform::nats::ensure_streams(&app.jetstream, &app.subjects, 1)
        .await
        .unwrap();
    app.wait_for_stream_count(6, Duration::from_secs(20)).await;
    let mut ids: Vec<_> = app
        .events_in_stream()
        .await
        .into_iter()
        .map(|e| e.message.aggregate_id)
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "before", "during0", "during1", "during2", "during3", "during4"
        ]
    );
}

#[tokio::test]
async fn graceful_stop_publishes_everything_accepted_before_exiting() {
    let mut app = TestApp::spawn().await;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "g", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    for _ in 0..50 {
        accepted(
            &app.send("account.deposit", json!({"account_id": "g", "amount": 1}))
                .await,
        );
    }
    app.stop_command_service().await;
    // No waiting: the relay flushed before the service returned.
    assert_eq!(
        app.events_in_stream_count().await,
        u64::try_from(app.events_in_store().await).unwrap()
    );
}

#[tokio::test]
async fn a_command_id_is_remembered_across_restarts() {
    let mut app = TestApp::spawn().await;
    let id = uuid::Uuid::new_v4();
    let body = json!({"account_id": "mem", "owner": "o", "currency": "EUR"});
    let first = app.send_with_id("account.open", id, body.clone()).await;
    accepted(&first);
    app.stop_command_service().await;
    app.start_command_service(&[]).await;
    assert_eq!(app.send_with_id("account.open", id, body).await, first);
    assert_eq!(app.events_in_store().await, 1);
}

/// PostgreSQL's clock now (the relay's reads are timed by it).
async fn db_now(app: &TestApp) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// Waits until the relay has started two outbox reads after `since`: the first one's batch
/// was published (or found empty) before the second began.
async fn relay_read_twice_since(app: &TestApp, since: chrono::DateTime<chrono::Utc>) {
    let last_read = || async {
        sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "SELECT max(query_start) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'command-service-relay'
               AND query LIKE '%pg_snapshot_xmin%'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = since;
    for _ in 0..2 {
        loop {
            if let Some(read) = last_read().await.filter(|read| *read > after) {
                after = read;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the relay did not read the outbox"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Waits until an event of `aggregate_id` is in the events stream; returns the whole stream.
async fn wait_for_aggregate_in_stream(app: &TestApp, aggregate_id: &str) -> Vec<StoredEvent> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stream = app.events_in_stream().await;
        if stream
            .iter()
            .any(|e| e.message.aggregate_id == aggregate_id)
        {
            return stream;
        }
        assert!(
            Instant::now() < deadline,
            "{aggregate_id} never reached the stream; it holds {:?}",
            stream.iter().map(|e| &e.msg_id).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the accounts projection shows each account at its version.
async fn wait_for_versions(app: &TestApp, versions: &[(&str, i64)]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let want: BTreeMap<String, i64> = versions
        .iter()
        .map(|(id, version)| ((*id).to_owned(), *version))
        .collect();
    loop {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT account_id, version FROM accounts")
            .fetch_all(&app.db)
            .await
            .unwrap();
        let have: BTreeMap<String, i64> = rows.into_iter().collect();
        if want
            .iter()
            .all(|(id, version)| have.get(id) == Some(version))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the accounts projection did not catch up: {have:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
