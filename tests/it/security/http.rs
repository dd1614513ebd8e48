//! The HTTP API: tokens and scopes on every `/v1` endpoint, owners, open health endpoints,
//! security headers, CORS off by default, and the request rate.

use platform::auth::Scope;
use reqwest::StatusCode;
use serde_json::json;
use tests::TestApp;
use uuid::Uuid;

use super::{bad_tokens, token};

async fn get(app: &TestApp, path: &str, token: Option<&str>) -> reqwest::Response {
    // A client of its own: `app.http` sends the admin token by default.
    let mut request = reqwest::Client::new().get(format!("{}{path}", app.http_base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// Every `/v1` endpoint, and whether it is an audit one.
fn every_endpoint(transfer: Uuid, command: Uuid) -> Vec<(String, bool)> {
    vec![
        ("/v1/accounts".into(), false),
        ("/v1/accounts/h-a".into(), false),
        ("/v1/accounts/h-a/entries".into(), false),
        ("/v1/accounts/h-a/transfers".into(), false),
        (format!("/v1/transfers/{transfer}"), false),
        ("/v1/totals".into(), false),
        (format!("/v1/commands/{command}"), false),
        ("/v1/audit/account/h-a/events".into(), true),
        ("/v1/audit/account/h-a/state?version=1".into(), true),
        (format!("/v1/audit/correlations/{transfer}/events"), true),
    ]
}

#[tokio::test]
async fn every_endpoint_needs_a_valid_token_and_its_scope() {
    let app = TestApp::spawn().await;
    super::super::transfers::open(&app, "h-a", "EUR", 100).await;
    super::super::transfers::open(&app, "h-b", "EUR", 0).await;
    let transfer = Uuid::now_v7();
    let reply = super::super::transfers::request(&app, transfer, "h-a", "h-b", 10).await;
    super::super::transfers::settled(&app, &reply).await;
    let command = reply.command_id();
    let reader = token(&[Scope::AccountsRead], None);
    let auditor = token(&[Scope::AuditRead], None);
    for (path, audit) in every_endpoint(transfer, command) {
        let response = get(&app, &path, None).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], "unauthenticated");
        for (why, bad) in bad_tokens() {
            assert_eq!(
                get(&app, &path, Some(&bad)).await.status(),
                StatusCode::UNAUTHORIZED,
                "{path} with a token that is {why}"
            );
        }
        let (allowed, refused) = if audit {
            (&auditor, &reader)
        } else {
            (&reader, &auditor)
        };
        let response = get(&app, &path, Some(refused)).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], "forbidden");
        assert_eq!(
            get(&app, &path, Some(allowed)).await.status(),
            StatusCode::OK,
            "{path}"
        );
    }
    // Health, readiness, metrics and the API document stay open and reveal no secrets.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let response = get(&app, path, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let text = response.text().await.unwrap();
        assert!(!text.contains(tests::app::TEST_AUTH_SECRET), "{path}");
        assert!(!text.contains("postgres://"), "{path}");
    }
}

#[tokio::test]
async fn an_owner_token_sees_only_its_owners_accounts_and_their_transfers() {
    let app = TestApp::spawn().await;
    for (id, owner) in [("o-mine", "erin"), ("o-theirs", "frank")] {
        tests::client::accepted(
            &app.send(
                "account.open",
                json!({"account_id": id, "owner": owner, "currency": "EUR"}),
            )
            .await,
        );
    }
    tests::client::accepted(
        &app.send(
            "account.deposit",
            json!({"account_id": "o-theirs", "amount": 90}),
        )
        .await,
    );
    let between = Uuid::now_v7();
    let reply = super::super::transfers::request(&app, between, "o-theirs", "o-mine", 30).await;
    super::super::transfers::settled(&app, &reply).await;
    let erin = token(&[Scope::AccountsRead, Scope::AuditRead], Some("erin"));
    assert_eq!(
        get(&app, "/v1/accounts/o-mine", Some(&erin)).await.status(),
        200
    );
    for path in [
        "/v1/accounts/o-theirs",
        "/v1/accounts/o-theirs/entries",
        "/v1/accounts/o-theirs/transfers",
    ] {
        let theirs = get(&app, path, Some(&erin)).await;
        let missing = get(&app, &path.replace("o-theirs", "o-nobody"), Some(&erin)).await;
        assert_eq!(theirs.status(), StatusCode::NOT_FOUND, "{path}");
        let (theirs, missing): (serde_json::Value, serde_json::Value) =
            (theirs.json().await.unwrap(), missing.json().await.unwrap());
        assert_eq!(
            theirs["detail"].as_str().unwrap().replace("o-theirs", "X"),
            missing["detail"].as_str().unwrap().replace("o-nobody", "X"),
            "{path} answers differently for someone else's account than for none"
        );
    }
    let list: serde_json::Value = get(&app, "/v1/accounts", Some(&erin))
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["o-mine"]);
    let list: serde_json::Value = get(&app, "/v1/accounts?owner=frank", Some(&erin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"], json!([]));
    // The transfer into her account is hers to see too.
    assert_eq!(
        get(&app, &format!("/v1/transfers/{between}"), Some(&erin))
            .await
            .status(),
        200
    );
    // What spans owners is not for an owner token, whatever its scopes.
    for path in ["/v1/totals", "/v1/audit/account/o-mine/events"] {
        assert_eq!(
            get(&app, path, Some(&erin)).await.status(),
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
}

#[tokio::test]
async fn responses_carry_security_headers_and_no_cors_by_default() {
    let app = TestApp::spawn().await;
    let response = reqwest::Client::new()
        .get(format!("{}/v1/accounts", app.http_base))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    let headers = response.headers();
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(headers.contains_key("content-security-policy"));
    assert!(!headers.contains_key("access-control-allow-origin"));
    // Errors say what is wrong, never how the server is built.
    let response = get(
        &app,
        "/v1/accounts?limit=9999",
        Some(&tests::app::admin_token()),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let text = response.text().await.unwrap();
    for leak in ["SELECT", "sqlx", "panicked", ".rs:"] {
        assert!(!text.contains(leak), "{leak} in {text}");
    }
}

#[tokio::test]
async fn a_burst_over_the_http_rate_gets_429_with_retry_after_then_recovers() {
    let app = TestApp::spawn().await;
    let flags = app.service_flags();
    let config = <query_service::Config as clap::Parser>::try_parse_from(
        std::iter::once("query-service".to_owned())
            .chain(flags)
            .chain([
                "--http-addr=127.0.0.1:0".to_owned(),
                "--http-rate-per-s=1".to_owned(),
                "--http-rate-burst=2".to_owned(),
                tests::app::auth_flag(),
            ]),
    )
    .unwrap();
    let slow = query_service::Application::build(config).await.unwrap();
    let base = format!("http://{}", slow.http_addr());
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(slow.run(stop.clone()));
    let reader = token(&[Scope::AccountsRead], None);
    let client = reqwest::Client::new();
    let mut retry_after = None;
    for _ in 0..20 {
        let response = client
            .get(format!("{base}/v1/accounts"))
            .bearer_auth(&reader)
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = Some(
                response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap(),
            );
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["code"], "rate_limited");
        }
    }
    let retry_after = retry_after.expect("a burst of 20 at 5/s was never limited");
    assert!((1..=5).contains(&retry_after));
    tokio::time::sleep(std::time::Duration::from_secs(retry_after)).await;
    let response = client
        .get(format!("{base}/v1/accounts"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    stop.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn configured_origins_get_cors_headers_and_others_do_not() {
    let app = TestApp::spawn().await;
    let config = <query_service::Config as clap::Parser>::try_parse_from(
        std::iter::once("query-service".to_owned())
            .chain(app.service_flags())
            .chain([
                "--http-addr=127.0.0.1:0".to_owned(),
                "--http-cors-origins=https://ledger.example".to_owned(),
                tests::app::auth_flag(),
            ]),
    )
    .unwrap();
    let server = query_service::Application::build(config).await.unwrap();
    let base = format!("http://{}", server.http_addr());
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone()));
    let preflight = |origin: &'static str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, format!("{base}/v1/accounts"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "authorization")
            .send()
    };
    let allowed = preflight("https://ledger.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://ledger.example"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
    stop.cancel();
    task.await.unwrap().unwrap();
}
