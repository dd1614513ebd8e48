//! Durable commands: published while the command-service is down, executed in order when it
//! returns, each result in the command log and on `<prefix>.results.<command_id>`.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::HeaderMap;
use domain::{CommandReply, ErrorCode};
use futures::StreamExt;
use serde_json::json;
use tests::TestApp;
use uuid::Uuid;

async fn publish_job(app: &TestApp, command: &str, id: Uuid, body: serde_json::Value) {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.to_string().as_str());
    headers.insert(
        "Authorization",
        format!("Bearer {}", tests::app::admin_token()).as_str(),
    );
    let ack = app
        .jetstream
        .publish_with_headers(
            format!("{}.jobs.{command}", app.subjects.prefix()),
            headers,
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, app.streams.commands);
}

#[tokio::test]
async fn durable_commands_wait_for_the_service_and_run_in_order() {
    let mut app = TestApp::spawn().await;
    app.stop_command_service().await;
    let mut results = app
        .nats
        .subscribe(format!("{}.results.>", app.subjects.prefix()))
        .await
        .unwrap();

    let open = Uuid::new_v4();
    let deposits: Vec<Uuid> = (0..30).map(|_| Uuid::new_v4()).collect();
    let bad = Uuid::new_v4();
    publish_job(
        &app,
        "account.open",
        open,
        json!({"account_id": "d1", "owner": "o", "currency": "EUR"}),
    )
    .await;
    for (i, id) in deposits.iter().enumerate() {
        publish_job(
            &app,
            "account.deposit",
            *id,
            json!({"account_id": "d1", "amount": i + 1}),
        )
        .await;
    }
    // A client retrying a publish with the same id: the stream keeps one.
    publish_job(
        &app,
        "account.deposit",
        deposits[0],
        json!({"account_id": "d1", "amount": 1}),
    )
    .await;
    publish_job(&app, "account.deposit", bad, json!({"account_id": "d1"})).await;
    assert_eq!(
        app.events_in_store().await,
        0,
        "nothing runs while the service is down"
    );

    app.start_command_service(&[]).await;
    let mut replies: HashMap<Uuid, CommandReply> = HashMap::new();
    while replies.len() < 32 {
        let message = tokio::time::timeout(Duration::from_secs(20), results.next())
            .await
            .expect("all results within 20 s")
            .unwrap();
        let reply: CommandReply = serde_json::from_slice(&message.payload).unwrap();
        assert!(message.subject.ends_with(&reply.command_id().to_string()));
        replies.insert(reply.command_id(), reply);
    }
    // In publish order: the open first, then each deposit gets the next version.
    assert!(matches!(
        replies[&open],
        CommandReply::Accepted { version: 1, .. }
    ));
    for (i, id) in deposits.iter().enumerate() {
        match &replies[id] {
            CommandReply::Accepted { version, .. } => assert_eq!(*version, i as u64 + 2),
            other => panic!("deposit {i} not accepted: {other:?}"),
        }
    }
    match &replies[&bad] {
        CommandReply::Rejected { error, .. } => assert_eq!(error.code, ErrorCode::SchemaViolation),
        other => panic!("bad command accepted: {other:?}"),
    }
    assert_eq!(app.events_in_store().await, 31);

    // Every result, the rejection included, is readable later from the command log.
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM command_log")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(logged, 32);
    // And nothing is left in the work queue.
    let mut stream = app
        .jetstream
        .get_stream(&app.streams.commands)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stream.info().await.unwrap().state.messages > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "acked jobs stay in the work queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_instances_neither_duplicate_nor_reorder_events() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    // A second command-service on the same database and prefix: two relays compete, and the
    // queue group spreads the commands over both executors.
    let config =
        <command_service::Config as clap::Parser>::try_parse_from(app.command_service_args(&[]))
            .unwrap();
    let second = command_service::Application::build(config).await.unwrap();
    let stop_second = tokio_util::sync::CancellationToken::new();
    let second = tokio::spawn(second.run(stop_second.clone()));

    for a in 0..10 {
        tests::client::accepted(
            &app.send(
                "account.open",
                json!({"account_id": format!("m{a}"), "owner": "o", "currency": "EUR"}),
            )
            .await,
        );
    }
    let mut sends = Vec::new();
    for i in 0..200 {
        let app = std::sync::Arc::clone(&app);
        sends.push(tokio::spawn(async move {
            app.send(
                "account.deposit",
                json!({"account_id": format!("m{}", i % 10), "amount": 1}),
            )
            .await
        }));
    }
    for send in sends {
        tests::client::accepted(&send.await.unwrap());
    }
    app.wait_for_stream_count(210, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stream = app.events_in_stream().await;
    assert_eq!(stream.len(), 210, "duplicates in the stream");
    let mut last: HashMap<String, u64> = HashMap::new();
    for event in &stream {
        let previous = last.insert(event.message.aggregate_id.clone(), event.message.sequence);
        if previous.unwrap_or(0) + 1 != event.message.sequence {
            let rows: Vec<(i64, String, i64)> = sqlx::query_as(
                "SELECT sequence, tx_id::text, global_position FROM events WHERE aggregate_id = $1 ORDER BY sequence",
            )
            .bind(&event.message.aggregate_id)
            .fetch_all(&app.db)
            .await
            .unwrap();
            let in_stream: Vec<(u64, u64)> = stream
                .iter()
                .filter(|e| e.message.aggregate_id == event.message.aggregate_id)
                .map(|e| (e.stream_sequence, e.message.sequence))
                .collect();
            panic!(
                "{} out of order at {}: stored rows (sequence, tx_id, global_position) {rows:?}; stream (stream seq, seq) {in_stream:?}",
                event.message.aggregate_id, event.message.sequence
            );
        }
    }
    stop_second.cancel();
    second.await.unwrap().unwrap();
}
