//! The outbox relay: commit-safe order, exactly once, and recovery when the stream is behind
//! or ahead of the relay's checkpoint.

use std::time::Duration;

use serde_json::json;
use tests::TestApp;
use tests::client::accepted;

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
    // B is held back while A (an older transaction) is still running ...
    tokio::time::sleep(Duration::from_millis(600)).await;
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
    let mut app = TestApp::spawn().await;
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
    // As if the relay had crashed after publishing but before saving its checkpoint.
    sqlx::query("UPDATE relay_checkpoints SET tx_id = '0', global_position = 0")
        .execute(&app.db)
        .await
        .unwrap();
    app.start_command_service(&[]).await;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "after", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    app.wait_for_stream_count(21, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stream = app.events_in_stream().await;
    assert_eq!(stream.len(), 21);
    let mut ids: Vec<_> = stream.iter().map(|e| e.msg_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 21, "an event was published twice");
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
