//! `account.set_limits`: only with the admin scope; an overdraft lets the available balance go
//! below zero to its limit, a maximum balance refuses what would pass it (`limit_exceeded`).

use domain::ErrorCode;
use platform::auth::Scope;
use serde_json::json;
use tests::TestApp;
use tests::client::accepted;

use super::{Books, open, refusal, refused_writing_nothing};

#[tokio::test]
async fn set_limits_needs_the_admin_scope() {
    let app = TestApp::spawn().await;
    open(&app, "lim-a", "alice", "EUR", 100).await;
    let limits = json!({"account_id": "lim-a", "overdraft_limit": 500, "reason": "credit line"});
    for token in [
        tests::app::mint_token(
            "writer",
            &[Scope::AccountsWrite, Scope::TransfersWrite],
            None,
        ),
        tests::app::mint_token("alice", &[Scope::AccountsWrite], Some("alice")),
    ] {
        refused_writing_nothing(
            &app,
            vec![("account.set_limits", limits.clone(), ErrorCode::Forbidden)],
            Some(&token),
        )
        .await;
    }
    let reply = app.send("account.set_limits", limits).await;
    assert_eq!(accepted(&reply), ("lim-a".to_owned(), 3));
    let (actor, reason): (String, String) = sqlx::query_as(
        "SELECT metadata ->> 'actor', payload -> 'LimitsSet' ->> 'reason' FROM events
         WHERE aggregate_id = 'lim-a' AND event_type = 'LimitsSet'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(
        (actor.as_str(), reason.as_str()),
        ("test-admin", "credit line")
    );
}

#[tokio::test]
async fn an_overdraft_lets_the_balance_go_negative_to_its_limit() {
    let app = TestApp::spawn().await;
    open(&app, "od", "o", "EUR", 100).await;
    open(&app, "od-peer", "o", "EUR", 0).await;
    accepted(
        &app.send(
            "account.set_limits",
            json!({"account_id": "od", "overdraft_limit": 500, "reason": "r"}),
        )
        .await,
    );
    accepted(
        &app.send(
            "account.withdraw",
            json!({"account_id": "od", "amount": 450}),
        )
        .await,
    );
    assert_eq!(Books::read(&app).await.balance("od"), -350);
    // 150 more would be 500 below zero: allowed; 151 would not, by withdrawal or by leg.
    let before = Books::read(&app).await;
    for (command, body) in [
        (
            "account.withdraw",
            json!({"account_id": "od", "amount": 151}),
        ),
        (
            "transaction.post",
            json!({"transaction_id": uuid::Uuid::now_v7(),
                   "legs": [super::leg("od", "od-peer", 151, "EUR")]}),
        ),
    ] {
        let reply = app.send(command, body).await;
        let (code, details) = refusal(&reply);
        assert_eq!(code, ErrorCode::LimitExceeded, "{command}: {reply:?}");
        assert_eq!(details["limit"], "overdraft_limit", "{details}");
        assert_eq!(details["limit_value"], 500, "{details}");
        assert_eq!(details["account_id"], "od", "{details}");
    }
    assert_eq!(Books::read(&app).await, before);
    accepted(&super::post(&app, vec![super::leg("od", "od-peer", 150, "EUR")]).await);
    let books = Books::read(&app).await;
    books.assert_balanced();
    assert_eq!(books.balance("od"), -500);
    assert_eq!(books.balance("od-peer"), 150);
}

#[tokio::test]
async fn a_maximum_balance_refuses_a_deposit_past_it() {
    let app = TestApp::spawn().await;
    open(&app, "capped", "o", "EUR", 0).await;
    accepted(
        &app.send(
            "account.set_limits",
            json!({"account_id": "capped", "overdraft_limit": 0, "max_balance": 1_000, "reason": "kyc tier 1"}),
        )
        .await,
    );
    accepted(
        &app.send(
            "account.deposit",
            json!({"account_id": "capped", "amount": 1_000}),
        )
        .await,
    );
    let before = Books::read(&app).await;
    let reply = app
        .send(
            "account.deposit",
            json!({"account_id": "capped", "amount": 1}),
        )
        .await;
    let (code, details) = refusal(&reply);
    assert_eq!(code, ErrorCode::LimitExceeded);
    assert_eq!(details["limit"], "max_balance", "{details}");
    assert_eq!(details["limit_value"], 1_000, "{details}");
    assert_eq!(Books::read(&app).await, before);
    assert_eq!(before.balance("capped"), 1_000);
}
