//! One transfer at a time: completed, refused, refunded; the read models and the audit trail.

use domain::ErrorCode;
use serde_json::{Value, json};
use tests::TestApp;
use tests::client::{accepted, rejected_code};
use uuid::Uuid;

use super::{balance, caught_up, open, request, settled};

#[tokio::test]
async fn a_transfer_completes_and_both_accounts_link_to_it() {
    let app = super::spawn_steps().await;
    open(&app, "alice", "EUR", 1_000).await;
    open(&app, "bob", "EUR", 0).await;
    let id = Uuid::now_v7();
    let reply = request(&app, id, "alice", "bob", 300).await;
    let transfer = settled(&app, &reply).await;
    assert_eq!(transfer["status"], "completed", "{transfer}");
    assert_eq!(
        (transfer["from"].clone(), transfer["to"].clone()),
        (json!("alice"), json!("bob"))
    );
    assert_eq!(transfer["amount"], 300);
    assert!(transfer["settled_at"].is_string());
    caught_up(&app, "alice").await;
    caught_up(&app, "bob").await;
    assert_eq!(balance(&app, "alice").await, 700);
    assert_eq!(balance(&app, "bob").await, 300);
    for (account, direction) in [("alice", "debit"), ("bob", "credit")] {
        let entries: Value = app
            .http_get(&format!("/v1/accounts/{account}/entries"))
            .await
            .json()
            .await
            .unwrap();
        let last = entries["items"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["direction"], direction);
        assert_eq!(last["amount"], 300);
        assert_eq!(last["transfer_id"], id.to_string(), "{account}: {last}");
        let listed: Value = app
            .http_get(&format!("/v1/accounts/{account}/transfers"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(listed["items"][0]["transfer_id"], id.to_string());
    }
    let outgoing: Value = app
        .http_get("/v1/accounts/bob/transfers?direction=out")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(outgoing["items"], json!([]));

    // The source released its hold: it can now close once emptied.
    accepted(
        &app.send(
            "account.withdraw",
            json!({"account_id": "alice", "amount": 700}),
        )
        .await,
    );
    accepted(
        &app.send("account.close", json!({"account_id": "alice"}))
            .await,
    );

    // A repeated request is refused; the transfer stays completed, nothing moves twice.
    assert_eq!(
        rejected_code(&request(&app, id, "alice", "bob", 300).await),
        ErrorCode::AlreadyExists
    );
    caught_up(&app, "bob").await;
    assert_eq!(balance(&app, "bob").await, 300);
}

#[tokio::test]
async fn insufficient_funds_fails_the_transfer_and_moves_nothing() {
    let app = TestApp::spawn().await;
    open(&app, "poor", "EUR", 50).await;
    open(&app, "rich", "EUR", 0).await;
    let reply = request(&app, Uuid::now_v7(), "poor", "rich", 51).await;
    let transfer = settled(&app, &reply).await;
    assert_eq!(transfer["status"], "failed");
    assert_eq!(transfer["failure_code"], "insufficient_funds");
    caught_up(&app, "poor").await;
    caught_up(&app, "rich").await;
    assert_eq!(balance(&app, "poor").await, 50);
    assert_eq!(balance(&app, "rich").await, 0);
    let moved: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type LIKE 'Transfer%ed' AND aggregate_type = 'account'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(moved, 0, "no account event for a refused debit");
}

#[tokio::test]
async fn a_closed_destination_refunds_the_source() {
    let app = super::spawn_steps().await;
    open(&app, "src", "EUR", 500).await;
    open(&app, "dst", "EUR", 0).await;
    // Closed after the request was accepted (a request to a closed account is refused), so
    // the credit is what fails: hold the process manager until the account is closed.
    let mut app = app;
    app.stop_process_manager().await;
    let reply = request(&app, Uuid::now_v7(), "src", "dst", 200).await;
    accepted(&reply);
    accepted(
        &app.send("account.close", json!({"account_id": "dst"}))
            .await,
    );
    app.start_process_manager().await;
    let transfer = settled(&app, &reply).await;
    assert_eq!(transfer["status"], "failed", "{transfer}");
    assert_eq!(transfer["failure_code"], "account_closed");
    caught_up(&app, "src").await;
    assert_eq!(balance(&app, "src").await, 500, "the debit was refunded");
    let entries: Value = app
        .http_get("/v1/accounts/src/entries")
        .await
        .json()
        .await
        .unwrap();
    let directions: Vec<&str> = entries["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["direction"].as_str().unwrap())
        .collect();
    assert_eq!(
        directions,
        ["credit", "debit", "credit"],
        "deposit, debit, refund"
    );
}

#[tokio::test]
async fn impossible_requests_are_refused_and_write_nothing() {
    let app = TestApp::spawn().await;
    open(&app, "e1", "EUR", 100).await;
    open(&app, "e2", "EUR", 0).await;
    open(&app, "u1", "USD", 0).await;
    let events_before = app.events_in_store().await;
    let cases = [
        ("e1", "e1", 10, ErrorCode::SchemaViolation),
        ("e1", "u1", 10, ErrorCode::CurrencyMismatch),
        ("e1", "nobody", 10, ErrorCode::NotFound),
        ("e1", "e2", 0, ErrorCode::SchemaViolation),
        (
            "e1",
            "e2",
            1_000_000_000_000_001,
            ErrorCode::SchemaViolation,
        ),
    ];
    for (from, to, amount, code) in cases {
        let reply = request(&app, Uuid::now_v7(), from, to, amount).await;
        let got = rejected_code(&reply);
        // Amount bounds are schema checks first, domain checks second: either code is stable.
        assert!(
            got == code
                || (code == ErrorCode::SchemaViolation && got == ErrorCode::AmountOutOfRange),
            "{from}->{to} {amount}: {got:?}"
        );
    }
    assert_eq!(app.events_in_store().await, events_before);
}

#[tokio::test]
async fn steps_cannot_be_forged_by_a_client() {
    let mut app = super::spawn_steps().await;
    open(&app, "victim", "EUR", 100).await;
    open(&app, "thief", "EUR", 0).await;
    let events_before = app.events_in_store().await;
    let made_up = Uuid::now_v7();
    // A credit for a transfer that does not exist mints nothing.
    assert_eq!(
        rejected_code(
            &app.send(
                "account.credit",
                json!({"account_id": "thief", "transfer_id": made_up})
            )
            .await
        ),
        ErrorCode::NotFound
    );
    assert_eq!(
        rejected_code(
            &app.send(
                "account.debit",
                json!({"account_id": "victim", "transfer_id": made_up})
            )
            .await
        ),
        ErrorCode::NotFound
    );
    assert_eq!(app.events_in_store().await, events_before);

    // A real transfer, held before its debit: its outcome cannot be recorded ahead of the
    // accounts (money would vanish), and it cannot be failed once the source paid.
    app.stop_process_manager().await;
    let id = Uuid::now_v7();
    accepted(&request(&app, id, "victim", "thief", 60).await);
    let events_before = app.events_in_store().await;
    for (command, body) in [
        ("transfer.record_debit", json!({"transfer_id": id})),
        ("transfer.record_credit", json!({"transfer_id": id})),
        ("transfer.complete", json!({"transfer_id": id})),
        (
            "account.credit",
            json!({"account_id": "thief", "transfer_id": id}),
        ),
    ] {
        assert_eq!(
            rejected_code(&app.send(command, body).await),
            ErrorCode::Conflict,
            "{command}"
        );
    }
    assert_eq!(app.events_in_store().await, events_before);
    accepted(
        &app.send(
            "account.debit",
            json!({"account_id": "victim", "transfer_id": id}),
        )
        .await,
    );
    assert_eq!(
        rejected_code(
            &app.send(
                "transfer.fail",
                json!({"transfer_id": id, "code": "insufficient_funds", "reason": "forged"})
            )
            .await
        ),
        ErrorCode::Conflict
    );
    // The process manager takes it from there, to the end.
    app.start_process_manager().await;
    let transfer = settled(
        &app,
        &app.send_with_id(
            "transfer.request",
            Uuid::now_v7(),
            json!({"transfer_id": Uuid::now_v7(), "from": "victim", "to": "thief", "amount": 1}),
        )
        .await,
    )
    .await;
    assert_eq!(transfer["status"], "completed");
    caught_up(&app, "thief").await;
    assert_eq!(balance(&app, "thief").await, 61);
}

#[tokio::test]
async fn a_transfer_history_is_retrievable_by_its_correlation_id() {
    let app = super::spawn_steps().await;
    open(&app, "a", "EUR", 100).await;
    open(&app, "b", "EUR", 0).await;
    let id = Uuid::now_v7();
    let reply = request(&app, id, "a", "b", 40).await;
    settled(&app, &reply).await;
    let events: Value = app
        .http_get(&format!("/v1/audit/correlations/{id}/events"))
        .await
        .json()
        .await
        .unwrap();
    let seen: Vec<(String, String)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["aggregate_type"].as_str().unwrap().to_owned(),
                e["event_type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("transfer", "TransferRequested"),
        ("account", "TransferDebited"),
        ("transfer", "DebitRecorded"),
        ("account", "TransferCredited"),
        ("transfer", "CreditRecorded"),
        ("account", "TransferSettled"),
        ("transfer", "TransferCompleted"),
    ] {
        assert!(
            seen.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} missing from {seen:?}"
        );
    }
    assert_eq!(seen.len(), 7);
    // Each step's cause is an earlier event of the flow, not the client's command.
    let debit = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "TransferDebited")
        .unwrap();
    let requested_id = domain::envelope::event_id("transfer", &id.to_string(), 1);
    assert_eq!(debit["causation_id"], requested_id.to_string());
    assert_eq!(debit["correlation_id"], id.to_string());
    assert_eq!(
        app.http_get(&format!("/v1/audit/correlations/{}/events", Uuid::now_v7()))
            .await
            .status(),
        404
    );
}
