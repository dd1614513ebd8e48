//! `/v1/ops/...` (projections, dead letters with retry and drop, the audit digest, one
//! aggregate's chain check) and the `/console` files, against a real server: who may read and
//! act, what each answers, and what hostile input gets.

use std::time::{Duration, Instant};

use domain::CommandReply;
use platform::auth::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::TestApp;
use tests::app::mint_token;

mod console_files;
mod dead_letters;
mod digests;

const OPS_READS: [&str; 4] = [
    "/v1/ops/projections",
    "/v1/ops/dead-letters",
    "/v1/ops/digest",
    "/v1/ops/verify/account/ops-1",
];

pub(super) async fn get(app: &TestApp, path: &str, token: &str) -> (StatusCode, Value) {
    let response = app
        .http
        .get(format!("{}{path}", app.http_base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub(super) async fn post(app: &TestApp, path: &str, token: &str) -> (StatusCode, Value) {
    let response = app
        .http
        .post(format!("{}{path}", app.http_base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `check` every 100 ms until it holds, for at most 30 s.
pub(super) async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn consistency_token(reply: &CommandReply) -> String {
    match reply {
        CommandReply::Accepted {
            consistency_token, ..
        } => consistency_token.clone(),
        other => panic!("not accepted: {other:?}"),
    }
}

/// Opens `id` and deposits `amounts`; returns once the read model shows the last deposit.
pub(super) async fn account(app: &TestApp, id: &str, amounts: &[i64]) {
    let opened = app
        .send(
            "account.open",
            json!({"account_id": id, "owner": "ops-owner", "currency": "EUR"}),
        )
        .await;
    let mut token = consistency_token(&opened);
    for amount in amounts {
        let reply = app
            .send(
                "account.deposit",
                json!({"account_id": id, "amount": amount}),
            )
            .await;
        token = consistency_token(&reply);
    }
    let read = app
        .http_get_with_token(&format!("/v1/accounts/{id}"), &token)
        .await;
    assert_eq!(read.status(), 200);
}

#[tokio::test]
async fn ops_refuses_owner_bound_readers_and_tokens_without_audit_read() {
    let app = TestApp::spawn().await;
    account(&app, "ops-1", &[5]).await;
    let everything = [
        Scope::AccountsRead,
        Scope::AuditRead,
        Scope::AccountsWrite,
        Scope::TransfersWrite,
    ];
    let bound = mint_token("alice", &everything, Some("ops-owner"));
    let reader = mint_token("reader", &[Scope::AccountsRead], None);
    for path in OPS_READS {
        for token in [&bound, &reader] {
            let (status, problem) = get(&app, path, token).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {problem}");
            assert_eq!(problem["code"], "forbidden");
        }
        let anonymous = reqwest::get(format!("{}{path}", app.http_base))
            .await
            .unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    for action in ["retry", "drop"] {
        let path = format!("/v1/ops/dead-letters/accounts/ops-1/{action}");
        let (status, _) = post(&app, &path, &bound).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
}

#[tokio::test]
async fn projections_show_position_counts_and_no_lag_once_caught_up() {
    let app = TestApp::spawn().await;
    account(&app, "ops-1", &[5, 7]).await;
    let reader = mint_token("auditor", &[Scope::AuditRead], None);
    let mut last = Value::Null;
    eventually("the accounts projection shows no lag", async || {
        let (status, body) = get(&app, "/v1/ops/projections", &reader).await;
        assert_eq!(status, 200, "{body}");
        last = body;
        last["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["projection"] == "accounts")
            .all(|p| p["lag_events"] == 0)
    })
    .await;
    let accounts = last["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["projection"] == "accounts")
        .unwrap_or_else(|| panic!("no accounts projection in {last}"));
    // Three events applied (opened, two deposits), none dropped, nothing parked.
    assert_eq!(accounts["events_applied"], 3, "{last}");
    assert_eq!(accounts["events_dropped"], 0);
    assert_eq!(accounts["parked"], 0);
    assert!(accounts["position"].as_i64().unwrap() >= 3, "{last}");
    let stream_last = last["stream_last_sequence"].as_u64().unwrap();
    assert!(stream_last >= accounts["position"].as_u64().unwrap());
    assert!(last["lag_unavailable"].is_null(), "{last}");
    for name in ["accounts", "transfers", "transactions", "holds"] {
        assert!(
            last["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["projection"] == name),
            "{name} has no partition row: {last}"
        );
    }
}

#[tokio::test]
async fn verify_finds_an_intact_chain_intact_and_a_changed_event_changed() {
    let app = TestApp::spawn().await;
    account(&app, "ops-1", &[5, 7]).await;
    let auditor = mint_token("auditor", &[Scope::AuditRead], None);
    let (status, check) = get(&app, "/v1/ops/verify/account/ops-1", &auditor).await;
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["events"], 3);
    let (_, history) = get(&app, "/v1/audit/account/ops-1/events", &auditor).await;
    assert_eq!(
        check["head"], history["items"][2]["hash"],
        "{check} {history}"
    );

    sqlx::query(
        "UPDATE events SET payload = jsonb_set(payload, '{MoneyDeposited,reference}', '\"x\"')
         WHERE aggregate_id = 'ops-1' AND sequence = 2",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let (status, check) = get(&app, "/v1/ops/verify/account/ops-1", &auditor).await;
    assert_eq!(status, 200);
    assert_eq!(check["ok"], false, "{check}");
    assert_eq!(check["findings"][0]["kind"], "broken_link", "{check}");
    assert_eq!(check["findings"][0]["sequence"], 2);

    for path in [
        "/v1/ops/verify/account/nobody",
        "/v1/ops/verify/account/..%2Fops-1",
        "/v1/ops/verify/nothing/ops-1",
    ] {
        let (status, problem) = get(&app, path, &auditor).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {problem}");
        assert_eq!(problem["code"], "not_found");
    }
}
