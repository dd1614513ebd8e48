//! The hold expiry worker: a hold whose `expires_at` passed while no command-service ran (the
//! one that took it was SIGKILLed) is released by the next one, once.

use std::time::Duration;

use domain::ErrorCode;
use serde_json::json;
use tests::TestApp;
use tests::client::{accepted, rejected_code};
use uuid::Uuid;

/// The hold's events in the store: their types in order.
async fn hold_events(app: &TestApp, hold_id: Uuid) -> Vec<String> {
    sqlx::query_scalar::<_, String>(
        "SELECT event_type FROM events WHERE aggregate_type = 'hold' AND aggregate_id = $1
          ORDER BY sequence",
    )
    .bind(hold_id.to_string())
    .fetch_all(&app.db)
    .await
    .expect("hold events")
}

/// How many times the account's events released `hold_id`.
async fn releases(app: &TestApp, account: &str, hold_id: Uuid) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM events WHERE aggregate_type = 'account' AND aggregate_id = $1
            AND event_type = 'FundsReleased' AND payload->'FundsReleased'->>'hold_id' = $2",
    )
    .bind(account)
    .bind(hold_id.to_string())
    .fetch_one(&app.db)
    .await
    .expect("releases")
}

#[tokio::test]
async fn a_hold_that_lapsed_while_its_service_was_killed_is_released_once_by_the_next() {
    let mut app = TestApp::spawn().await;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "exp-a", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    accepted(
        &app.send(
            "account.deposit",
            json!({"account_id": "exp-a", "amount": 1_000}),
        )
        .await,
    );
    // From here on only real binaries run commands (and the expiry worker).
    app.stop_command_service().await;
    let mut first = app.start_binary("command-service", &[]);
    first.wait_ready(Duration::from_secs(30)).await;

    let hold_id = Uuid::now_v7();
    let expires_at = chrono::Utc::now() + chrono::TimeDelta::seconds(3);
    accepted(
        &app.send(
            "hold.place",
            json!({"hold_id": hold_id, "account_id": "exp-a", "amount": 400,
                   "expires_at": expires_at.to_rfc3339()}),
        )
        .await,
    );
    first.kill();
    assert_eq!(hold_events(&app, hold_id).await, ["HoldPlaced"]);

    // Past the expiry (rounded up to the second), with no service running.
    let lapsed = expires_at + chrono::TimeDelta::seconds(1);
    while chrono::Utc::now() < lapsed {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut second = app.start_binary("command-service", &["--hold-expiry-interval-ms=200"]);
    second.wait_ready(Duration::from_secs(30)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while hold_events(&app, hold_id).await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lapsed hold was not released within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        hold_events(&app, hold_id).await,
        ["HoldPlaced", "HoldExpired"]
    );
    assert_eq!(releases(&app, "exp-a", hold_id).await, 1);

    // Ended: neither a capture nor a void can touch it, and nothing more is written.
    let capture = app
        .send(
            "hold.capture",
            json!({"hold_id": hold_id, "to": "@world:EUR"}),
        )
        .await;
    assert_eq!(rejected_code(&capture), ErrorCode::HoldEnded);
    let void = app.send("hold.void", json!({"hold_id": hold_id})).await;
    assert_eq!(rejected_code(&void), ErrorCode::HoldEnded);
    assert_eq!(releases(&app, "exp-a", hold_id).await, 1);
    // The funds are available again: the whole balance can be withdrawn.
    accepted(
        &app.send(
            "account.withdraw",
            json!({"account_id": "exp-a", "amount": 1_000}),
        )
        .await,
    );
    second.kill();
}
