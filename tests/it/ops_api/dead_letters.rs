//! `/v1/ops/dead-letters`: parked aggregates listed, retried by an admin only, and hostile
//! requests that change nothing.

use platform::auth::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::TestApp;
use tests::app::{admin_token, mint_token};
use tests::client::accepted;

use super::{account, eventually, get, post};

/// An app whose projection worker gives up after two deliveries, and a cause of poison: the
/// read model refuses entries with reference `poison`.
async fn with_poison_cause() -> (TestApp, tokio_util::sync::CancellationToken) {
    let mut app = TestApp::spawn().await;
    app.stop_projections().await;
    let config = <projections::Config as clap::Parser>::try_parse_from(
        std::iter::once("projections".to_owned())
            .chain(app.service_flags())
            .chain([
                "--ops-addr=127.0.0.1:0".to_owned(),
                "--projection-poison-attempts=2".to_owned(),
            ]),
    )
    .unwrap();
    let worker = projections::Application::build(config).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(worker.run(stop.clone()));
    sqlx::query(
        "ALTER TABLE account_entries ADD CONSTRAINT no_poison CHECK (reference <> 'poison')",
    )
    .execute(&app.db)
    .await
    .unwrap();
    (app, stop)
}

async fn parked_action(app: &TestApp, id: &str) -> Option<Option<String>> {
    sqlx::query_scalar("SELECT action FROM projection_parked WHERE aggregate_id = $1")
        .bind(id)
        .fetch_optional(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn dead_letters_are_listed_and_only_an_admin_retries_them() {
    let (app, stop) = with_poison_cause().await;
    account(&app, "sick", &[]).await;
    let deposit = json!({"account_id": "sick", "amount": 9, "reference": "poison"});
    accepted(&app.send("account.deposit", deposit).await);
    accepted(
        &app.send(
            "account.deposit",
            json!({"account_id": "sick", "amount": 1}),
        )
        .await,
    );
    let auditor = mint_token("auditor", &[Scope::AuditRead], None);
    let path = "/v1/ops/dead-letters?projection=accounts";
    let mut listed = Value::Null;
    eventually("sick is parked with one event behind it", async || {
        listed = get(&app, path, &auditor).await.1;
        listed["items"][0]["waiting"] == 1
    })
    .await;
    let item = &listed["items"][0];
    assert_eq!(item["aggregate_id"], "sick", "{listed}");
    assert_eq!(item["projection"], "accounts");
    assert_eq!(item["sequence"], 2);
    assert_eq!(item["event_type"], "MoneyDeposited");
    assert!(item["attempts"].as_i64().unwrap() >= 2, "{listed}");
    assert!(
        item["error"].as_str().unwrap().contains("no_poison"),
        "{listed}"
    );

    // A reader with audit:read may look but not act; nothing changes.
    for action in ["retry", "drop"] {
        let url = format!("/v1/ops/dead-letters/accounts/sick/{action}");
        let (status, problem) = post(&app, &url, &auditor).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
        assert_eq!(parked_action(&app, "sick").await, Some(None));
    }
    hostile_actions_change_nothing(&app).await;

    // Fixed, then retried by an admin: applied in order, and the aggregate leaves the list.
    sqlx::query("ALTER TABLE account_entries DROP CONSTRAINT no_poison")
        .execute(&app.db)
        .await
        .unwrap();
    let (status, body) = post(
        &app,
        "/v1/ops/dead-letters/accounts/sick/retry",
        &admin_token(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["action"], "retry");
    eventually("sick is released", async || {
        parked_action(&app, "sick").await.is_none()
    })
    .await;
    let (_, account) = get(&app, "/v1/accounts/sick", &admin_token()).await;
    assert_eq!(account["balance"], 10, "{account}");
    let (_, after) = get(&app, path, &auditor).await;
    assert_eq!(after["items"], json!([]), "{after}");
    let (status, _) = post(
        &app,
        "/v1/ops/dead-letters/accounts/sick/drop",
        &admin_token(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no longer parked");
    stop.cancel();
}

/// Unknown projections, ids that are not parked, and ids shaped like paths: refused, and the
/// parked row untouched.
async fn hostile_actions_change_nothing(app: &TestApp) {
    let admin = admin_token();
    for (url, expected) in [
        (
            "/v1/ops/dead-letters/nope/sick/retry",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/ops/dead-letters/accounts%2F../sick/retry",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/ops/dead-letters/transfers/sick/retry",
            StatusCode::NOT_FOUND,
        ),
        (
            "/v1/ops/dead-letters/accounts/well/drop",
            StatusCode::NOT_FOUND,
        ),
        (
            "/v1/ops/dead-letters/accounts/..%2F..%2Fsick/drop",
            StatusCode::NOT_FOUND,
        ),
        (
            "/v1/ops/dead-letters/accounts/sick%25/drop",
            StatusCode::NOT_FOUND,
        ),
        (
            "/v1/ops/dead-letters/accounts/sick'%20OR%20'1'='1/drop",
            StatusCode::NOT_FOUND,
        ),
        (
            "/v1/ops/dead-letters/accounts/sick%00/drop",
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, body) = post(app, url, &admin).await;
        assert_eq!(status, expected, "{url}: {body}");
        assert_eq!(parked_action(app, "sick").await, Some(None), "{url}");
    }
    let (status, body) = get(app, "/v1/ops/dead-letters?projection=../accounts", &admin).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // GET on an action path is no action.
    let (status, _) = get(app, "/v1/ops/dead-letters/accounts/sick/retry", &admin).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(parked_action(app, "sick").await, Some(None));
}
