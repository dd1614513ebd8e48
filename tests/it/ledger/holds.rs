//! Holds: placed, captured in part (the rest released), voided, expired by the worker; every
//! end once, and each way of ending one twice refused with `hold_ended`.

use std::time::{Duration, Instant};

use domain::{CommandReply, ErrorCode};
use serde_json::{Value, json};
use tests::TestApp;
use tests::client::accepted;
use uuid::Uuid;

use super::{Books, open, refusal, refused_writing_nothing};

async fn place(app: &TestApp, hold: Uuid, account: &str, amount: i64) -> CommandReply {
    app.send(
        "hold.place",
        json!({"hold_id": hold, "account_id": account, "amount": amount}),
    )
    .await
}

/// The hold's stored event types, in order.
async fn hold_events(app: &TestApp, hold: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'hold' AND aggregate_id = $1
         ORDER BY sequence",
    )
    .bind(hold.to_string())
    .fetch_all(&app.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_hold_reserves_funds_and_a_partial_capture_releases_the_rest() {
    let app = TestApp::spawn().await;
    open(&app, "card", "o", "EUR", 1_000).await;
    open(&app, "shop", "o", "EUR", 0).await;
    let hold = Uuid::now_v7();
    let reply = place(&app, hold, "card", 600).await;
    let CommandReply::Accepted {
        aggregate_id,
        version,
        consistency_token,
        ..
    } = &reply
    else {
        panic!("refused: {reply:?}");
    };
    assert_eq!(
        (aggregate_id.as_str(), *version),
        (hold.to_string().as_str(), 1)
    );
    assert_eq!(consistency_token, &format!("hold:{hold}:1"));
    let books = Books::read(&app).await;
    assert_eq!((books.balance("card"), books.held("card")), (1_000, 600));
    assert_eq!(books.accounts["card"].1.available(), 400);

    // Withdrawals check the available balance, not the posted one.
    refused_writing_nothing(
        &app,
        vec![(
            "account.withdraw",
            json!({"account_id": "card", "amount": 401}),
            ErrorCode::InsufficientFunds,
        )],
        None,
    )
    .await;

    let captured = app
        .send(
            "hold.capture",
            json!({"hold_id": hold, "amount": 250, "to": "shop"}),
        )
        .await;
    assert_eq!(accepted(&captured), (hold.to_string(), 2));
    let books = Books::read(&app).await;
    books.assert_balanced();
    assert_eq!((books.balance("card"), books.held("card")), (750, 0));
    assert_eq!(books.balance("shop"), 250);
    assert_eq!(
        hold_events(&app, hold).await,
        ["HoldPlaced", "HoldCaptured"]
    );

    // Ended: a second capture, or a void, is refused and writes nothing.
    refused_writing_nothing(
        &app,
        vec![
            (
                "hold.capture",
                json!({"hold_id": hold, "to": "shop"}),
                ErrorCode::HoldEnded,
            ),
            ("hold.void", json!({"hold_id": hold}), ErrorCode::HoldEnded),
        ],
        None,
    )
    .await;
}

#[tokio::test]
async fn a_capture_above_the_hold_or_after_a_void_is_refused() {
    let app = TestApp::spawn().await;
    open(&app, "card2", "o", "EUR", 1_000).await;
    open(&app, "shop2", "o", "EUR", 0).await;
    let hold = Uuid::now_v7();
    accepted(&place(&app, hold, "card2", 300).await);
    refused_writing_nothing(
        &app,
        vec![
            (
                "hold.capture",
                json!({"hold_id": hold, "amount": 301, "to": "shop2"}),
                ErrorCode::AmountOutOfRange,
            ),
            (
                "hold.capture",
                json!({"hold_id": hold, "to": "card2"}),
                ErrorCode::SchemaViolation,
            ),
            (
                "hold.capture",
                json!({"hold_id": Uuid::now_v7(), "to": "shop2"}),
                ErrorCode::NotFound,
            ),
            (
                "hold.place",
                json!({"hold_id": Uuid::now_v7(), "account_id": "card2", "amount": 701}),
                ErrorCode::InsufficientFunds,
            ),
            (
                "hold.place",
                json!({"hold_id": hold, "account_id": "card2", "amount": 1}),
                ErrorCode::AlreadyExists,
            ),
        ],
        None,
    )
    .await;
    accepted(&app.send("hold.void", json!({"hold_id": hold})).await);
    let books = Books::read(&app).await;
    assert_eq!((books.balance("card2"), books.held("card2")), (1_000, 0));
    let before = Books::read(&app).await;
    let after_void = app
        .send("hold.capture", json!({"hold_id": hold, "to": "shop2"}))
        .await;
    let (code, details) = refusal(&after_void);
    assert_eq!(code, ErrorCode::HoldEnded);
    assert_eq!(details["status"], "voided");
    assert_eq!(
        refusal(&app.send("hold.void", json!({"hold_id": hold})).await).0,
        ErrorCode::HoldEnded
    );
    assert_eq!(Books::read(&app).await, before);
    assert_eq!(hold_events(&app, hold).await, ["HoldPlaced", "HoldVoided"]);
}

#[tokio::test]
async fn an_expired_hold_is_released_once_by_the_worker_and_cannot_be_captured() {
    let app = TestApp::spawn().await;
    open(&app, "card3", "o", "EUR", 1_000).await;
    open(&app, "shop3", "o", "EUR", 0).await;
    let hold = Uuid::now_v7();
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(3);
    accepted(
        &app.send(
            "hold.place",
            json!({"hold_id": hold, "account_id": "card3", "amount": 400, "expires_at": expires_at}),
        )
        .await,
    );
    // A hold not yet due stays held; the worker releases it once it is.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = hold_events(&app, hold).await;
        if events.len() > 1 {
            assert_eq!(events, ["HoldPlaced", "HoldExpired"]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hold was not expired within 60 s of being due"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        chrono::Utc::now() >= expires_at,
        "expired before it was due"
    );
    let books = Books::read(&app).await;
    assert_eq!((books.balance("card3"), books.held("card3")), (1_000, 0));
    let releases: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_id = 'card3' AND event_type = 'FundsReleased'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(releases.len(), 1, "{releases:?}");
    assert_eq!(releases[0]["FundsReleased"]["end"], "expired");
    let capture = app
        .send("hold.capture", json!({"hold_id": hold, "to": "shop3"}))
        .await;
    let (code, details) = refusal(&capture);
    assert_eq!(code, ErrorCode::HoldEnded);
    assert_eq!(details["status"], "expired");
    // A client may not expire a hold itself: that is the worker's (scope admin).
    let client = tests::app::mint_token(
        "client",
        &[
            platform::auth::Scope::AccountsWrite,
            platform::auth::Scope::TransfersWrite,
        ],
        None,
    );
    let other = Uuid::now_v7();
    accepted(&place(&app, other, "card3", 10).await);
    refused_writing_nothing(
        &app,
        vec![(
            "hold.expire",
            json!({"hold_id": other}),
            ErrorCode::Forbidden,
        )],
        Some(&client),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(hold_events(&app, hold).await, ["HoldPlaced", "HoldExpired"]);
}
