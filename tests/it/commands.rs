//! The command path end to end, with a plain NATS client acting as the user: every command,
//! every applicable error code (and that a rejection writes nothing), idempotency, contention.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use domain::{CommandReply, ErrorCode};
use serde_json::json;
use tests::TestApp;
use tests::client::{accepted, rejected_code};

async fn open(app: &TestApp, id: &str) {
    let reply = app
        .send(
            "account.open",
            json!({"account_id": id, "owner": "alice", "currency": "EUR"}),
        )
        .await;
    accepted(&reply);
}

#[tokio::test]
async fn every_account_command_is_accepted_stored_and_relayed_in_order() {
    let app = TestApp::spawn().await;
    let steps = [
        (
            "account.open",
            json!({"account_id": "acc-1", "owner": "alice", "currency": "EUR"}),
        ),
        (
            "account.deposit",
            json!({"account_id": "acc-1", "amount": 100, "reference": "inv-7"}),
        ),
        (
            "account.withdraw",
            json!({"account_id": "acc-1", "amount": 30}),
        ),
        (
            "account.freeze",
            json!({"account_id": "acc-1", "reason": "kyc review"}),
        ),
        (
            "account.deposit",
            json!({"account_id": "acc-1", "amount": 5}),
        ),
        ("account.unfreeze", json!({"account_id": "acc-1"})),
        (
            "account.withdraw",
            json!({"account_id": "acc-1", "amount": 75}),
        ),
        ("account.close", json!({"account_id": "acc-1"})),
    ];
    for (i, (command, body)) in steps.iter().enumerate() {
        let reply = app.send(command, body.clone()).await;
        let (aggregate_id, version) = accepted(&reply);
        assert_eq!(aggregate_id, "acc-1");
        assert_eq!(version, i as u64 + 1, "{command}");
        let CommandReply::Accepted {
            consistency_token, ..
        } = &reply
        else {
            unreachable!()
        };
        assert!(!consistency_token.is_empty());
    }
    assert_eq!(app.events_in_store().await, 8);
    let logged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM command_log WHERE status = 'accepted'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(logged, 8);

    app.wait_for_stream_count(8, Duration::from_secs(10)).await;
    let stream = app.events_in_stream().await;
    let types: Vec<_> = stream
        .iter()
        .map(|e| e.message.event_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "AccountOpened",
            "MoneyDeposited",
            "MoneyWithdrawn",
            "AccountFrozen",
            "MoneyDeposited",
            "AccountUnfrozen",
            "MoneyWithdrawn",
            "AccountClosed"
        ]
    );
    for (i, event) in stream.iter().enumerate() {
        let sequence = i as u64 + 1;
        assert_eq!(event.message.sequence, sequence);
        assert_eq!(event.msg_id, format!("account:acc-1:{sequence}"));
        assert_eq!(event.message.metadata["actor"], "test-admin");
    }
    assert_eq!(
        stream[1].message.payload["MoneyDeposited"]["balance_after"],
        100
    );
}

#[tokio::test]
async fn every_error_code_that_applies_is_returned_and_writes_nothing() {
    let app = TestApp::spawn().await;
    open(&app, "rich").await;
    accepted(
        &app.send(
            "account.deposit",
            json!({"account_id": "rich", "amount": 50}),
        )
        .await,
    );
    open(&app, "cold").await;
    accepted(
        &app.send(
            "account.freeze",
            json!({"account_id": "cold", "reason": "hold"}),
        )
        .await,
    );
    open(&app, "gone").await;
    accepted(
        &app.send("account.close", json!({"account_id": "gone"}))
            .await,
    );
    let before = app.events_in_store().await;

    let raw = |command: &'static str, body: Vec<u8>| (command, HeaderMap::new(), body);
    let body = |command: &'static str, value: serde_json::Value| {
        (
            command,
            HeaderMap::new(),
            serde_json::to_vec(&value).unwrap(),
        )
    };
    let mut stale = HeaderMap::new();
    stale.insert("Tally-Expected-Version", "1");
    let mut bad_id = HeaderMap::new();
    bad_id.insert("Tally-Command-Id", "not-a-uuid");

    type Request = (&'static str, HeaderMap, Vec<u8>);
    let cases: Vec<(Request, ErrorCode)> = vec![
        (
            raw("account.deposit", b"{not json".to_vec()),
            ErrorCode::InvalidJson,
        ),
        (
            body("account.deposit", json!({"account_id": "rich"})),
            ErrorCode::SchemaViolation,
        ),
        (
            body(
                "account.deposit",
                json!({"account_id": "rich", "amount": 1, "extra": 1}),
            ),
            ErrorCode::SchemaViolation,
        ),
        (
            body(
                "account.open",
                json!({"account_id": "has.dot", "owner": "o", "currency": "EUR"}),
            ),
            ErrorCode::SchemaViolation,
        ),
        (
            (
                "account.deposit",
                bad_id,
                serde_json::to_vec(&json!({"account_id": "rich", "amount": 1})).unwrap(),
            ),
            ErrorCode::SchemaViolation,
        ),
        (
            body("account.explode", json!({})),
            ErrorCode::UnknownCommand,
        ),
        (body("ship.open", json!({})), ErrorCode::UnknownCommand),
        (
            raw("account.deposit", vec![b' '; 64 * 1024 + 1]),
            ErrorCode::PayloadTooLarge,
        ),
        (
            body(
                "account.deposit",
                json!({"account_id": "nobody", "amount": 1}),
            ),
            ErrorCode::NotFound,
        ),
        (
            body(
                "account.open",
                json!({"account_id": "rich", "owner": "o", "currency": "EUR"}),
            ),
            ErrorCode::AlreadyExists,
        ),
        (
            (
                "account.deposit",
                stale,
                serde_json::to_vec(&json!({"account_id": "rich", "amount": 1})).unwrap(),
            ),
            ErrorCode::Conflict,
        ),
        (
            body("account.close", json!({"account_id": "rich"})),
            ErrorCode::Conflict,
        ),
        (
            body(
                "account.withdraw",
                json!({"account_id": "rich", "amount": 51}),
            ),
            ErrorCode::InsufficientFunds,
        ),
        (
            body(
                "account.withdraw",
                json!({"account_id": "cold", "amount": 1}),
            ),
            ErrorCode::AccountFrozen,
        ),
        (
            body(
                "account.deposit",
                json!({"account_id": "gone", "amount": 1}),
            ),
            ErrorCode::AccountClosed,
        ),
        (
            body(
                "account.deposit",
                json!({"account_id": "rich", "amount": 0}),
            ),
            ErrorCode::AmountOutOfRange,
        ),
        (
            body(
                "account.deposit",
                json!({"account_id": "rich", "amount": 1_000_000_000_000_001_i64}),
            ),
            ErrorCode::AmountOutOfRange,
        ),
    ];
    for ((command, headers, payload), expected) in cases {
        let reply = app.send_raw(command, headers, payload).await;
        let CommandReply::Rejected { error, .. } = &reply else {
            panic!("{command}: accepted, expected {expected}");
        };
        assert_eq!(error.code, expected, "{command}: {}", error.message);
        assert!(!error.message.is_empty());
    }
    assert_eq!(
        app.events_in_store().await,
        before,
        "a rejected command wrote events"
    );
    let balance: serde_json::Value = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_id = 'rich' ORDER BY sequence DESC LIMIT 1",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(balance["MoneyDeposited"]["balance_after"], 50);
}

#[tokio::test]
async fn schema_violations_name_the_field() {
    let app = TestApp::spawn().await;
    let reply = app
        .send(
            "account.open",
            json!({"account_id": "a", "owner": "o", "currency": "euro"}),
        )
        .await;
    let CommandReply::Rejected { error, .. } = reply else {
        panic!("accepted")
    };
    assert_eq!(error.code, ErrorCode::SchemaViolation);
    assert!(error.message.contains("/currency"), "{}", error.message);
    assert_eq!(error.details["errors"][0]["path"], "/currency");
}

#[tokio::test]
async fn the_same_command_id_executes_once_even_concurrently() {
    let app = Arc::new(TestApp::spawn().await);
    open(&app, "dup").await;
    let id = uuid::Uuid::new_v4();
    let body = json!({"account_id": "dup", "amount": 10});
    let mut sends = Vec::new();
    for _ in 0..20 {
        let app = Arc::clone(&app);
        let body = body.clone();
        sends.push(tokio::spawn(async move {
            app.send_with_id("account.deposit", id, body).await
        }));
    }
    let mut replies = Vec::new();
    for send in sends {
        replies.push(send.await.unwrap());
    }
    assert!(
        replies.iter().all(|r| r == &replies[0]),
        "replies differ: {replies:?}"
    );
    assert_eq!(accepted(&replies[0]).1, 2);
    // And again later, sequentially: still the first result.
    assert_eq!(
        app.send_with_id("account.deposit", id, body).await,
        replies[0]
    );
    assert_eq!(app.events_in_store().await, 2);
}

#[tokio::test]
async fn a_rejected_command_id_keeps_its_first_answer() {
    let app = TestApp::spawn().await;
    open(&app, "poor").await;
    let id = uuid::Uuid::new_v4();
    let withdraw = json!({"account_id": "poor", "amount": 10});
    let first = app
        .send_with_id("account.withdraw", id, withdraw.clone())
        .await;
    assert_eq!(rejected_code(&first), ErrorCode::InsufficientFunds);
    accepted(
        &app.send(
            "account.deposit",
            json!({"account_id": "poor", "amount": 100}),
        )
        .await,
    );
    // A retry of the same command gets the same answer rather than a different outcome.
    assert_eq!(
        app.send_with_id("account.withdraw", id, withdraw).await,
        first
    );
}

#[tokio::test]
async fn five_hundred_concurrent_deposits_on_one_account_all_succeed() {
    let app = Arc::new(TestApp::spawn().await);
    open(&app, "hot").await;
    let mut sends = Vec::new();
    for i in 0..500 {
        let app = Arc::clone(&app);
        sends.push(tokio::spawn(async move {
            // On a loaded machine the last of the queue may pass the command deadline and be
            // answered `unavailable`: the contract is to retry with the same id, which must
            // then give its one result, never a second deposit.
            let id = uuid::Uuid::now_v7();
            let body = json!({"account_id": "hot", "amount": i + 1});
            for _ in 0..10 {
                let reply = app.send_with_id("account.deposit", id, body.clone()).await;
                if tests::client::rejected_code_if_any(&reply)
                    != Some(domain::ErrorCode::Unavailable)
                {
                    return reply;
                }
            }
            panic!("deposit {i} still unavailable after 10 tries");
        }));
    }
    let mut versions = Vec::new();
    for send in sends {
        versions.push(accepted(&send.await.unwrap()).1);
    }
    versions.sort_unstable();
    assert_eq!(
        versions,
        (2..=501).collect::<Vec<u64>>(),
        "each deposit got its own version"
    );
    let balance: i64 = sqlx::query_scalar(
        "SELECT (payload->'MoneyDeposited'->>'balance_after')::bigint FROM events
         WHERE aggregate_id = 'hot' ORDER BY sequence DESC LIMIT 1",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(balance, (1..=500).sum::<i64>());
}

#[tokio::test]
async fn a_reply_carries_the_command_id_header_and_generated_ids_are_uuids() {
    let app = TestApp::spawn().await;
    let subject = format!("{}.cmd.account.open", app.subjects.prefix());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Authorization",
        format!("Bearer {}", tests::app::admin_token()).as_str(),
    );
    let response = app
        .nats
        .request_with_headers(
            subject,
            headers,
            serde_json::to_vec(&json!({"account_id": "h", "owner": "o", "currency": "USD"}))
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    let header = response
        .headers
        .as_ref()
        .and_then(|h| h.get("Tally-Command-Id"))
        .map(|v| v.as_str().to_owned())
        .unwrap();
    let reply: CommandReply = serde_json::from_slice(&response.payload).unwrap();
    assert_eq!(reply.command_id().to_string(), header);
}

#[tokio::test]
async fn a_command_result_is_readable_later_over_http() {
    let app = TestApp::spawn().await;
    let id = uuid::Uuid::new_v4();
    let reply = app
        .send_with_id(
            "account.open",
            id,
            json!({"account_id": "later", "owner": "o", "currency": "EUR"}),
        )
        .await;
    let response = app.http_get(&format!("/v1/commands/{id}")).await;
    assert_eq!(response.status(), 200);
    let record: serde_json::Value = response.json().await.unwrap();
    assert_eq!(record["status"], "accepted");
    assert_eq!(record["aggregate_id"], "later");
    assert_eq!(record["reply"], serde_json::to_value(&reply).unwrap());

    let missing = app
        .http_get(&format!("/v1/commands/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    let bad = app.http_get("/v1/commands/not-a-uuid").await;
    assert_eq!(bad.status(), 400);
    let problem: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(problem["status"], 400);
}

#[tokio::test]
async fn trace_context_travels_from_the_command_to_the_event_message() {
    let app = TestApp::spawn().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", traceparent);
    let body =
        serde_json::to_vec(&json!({"account_id": "tr", "owner": "o", "currency": "EUR"})).unwrap();
    accepted(&app.send_raw("account.open", headers, body).await);
    app.wait_for_stream_count(1, Duration::from_secs(10)).await;
    let stream = app.jetstream.get_stream(&app.streams.events).await.unwrap();
    let raw = stream.get_raw_message(1).await.unwrap();
    assert_eq!(
        raw.headers.get("traceparent").map(|v| v.as_str()),
        Some(traceparent)
    );
    let event = &app.events_in_stream().await[0];
    assert_eq!(
        event.message.metadata["trace_id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
}
