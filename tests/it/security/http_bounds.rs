//! The HTTP API under hostile input and at its bounds: consistency tokens that name another
//! owner's aggregate, malformed cursors and ids, tokens with an empty `owner`, and the rate
//! limiter's memory under many distinct clients.

use async_nats::HeaderMap;
use platform::auth::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::TestApp;

use super::token;

/// A GET with `token` and, if given, a consistency token waited on for at most 200 ms.
async fn get_with(
    app: &TestApp,
    path: &str,
    token: &str,
    consistency: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .get(format!("{}{path}", app.http_base))
        .bearer_auth(token);
    if let Some(consistency) = consistency {
        request = request
            .header("Tally-Consistency-Token", consistency)
            .header("Tally-Wait-Ms", "200");
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_consistency_token_tells_an_owner_nothing_of_another_owners_account() {
    let app = TestApp::spawn().await;
    for (id, owner) in [("cb-mine", "erin"), ("cb-theirs", "frank")] {
        tests::client::accepted(
            &app.send(
                "account.open",
                json!({"account_id": id, "owner": owner, "currency": "EUR"}),
            )
            .await,
        );
    }
    for amount in [5, 6, 7] {
        tests::client::accepted(
            &app.send(
                "account.deposit",
                json!({"account_id": "cb-theirs", "amount": amount}),
            )
            .await,
        );
    }
    // Wait (as the admin, as long as it takes) until the read model shows frank's account
    // at version 4.
    let response = reqwest::Client::new()
        .get(format!("{}/v1/accounts/cb-theirs", app.http_base))
        .bearer_auth(tests::app::admin_token())
        .header("Tally-Consistency-Token", "account:cb-theirs:4")
        .header("Tally-Wait-Ms", "5000")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let erin = token(&[Scope::AccountsRead], Some("erin"));
    // Their account, whatever the token, answers exactly as a missing one: 404.
    for version in [1, 4, 99] {
        for path in [
            "/v1/accounts/{id}",
            "/v1/accounts/{id}/entries",
            "/v1/accounts/{id}/transfers",
        ] {
            let theirs = get_with(
                &app,
                &path.replace("{id}", "cb-theirs"),
                &erin,
                Some(&format!("account:cb-theirs:{version}")),
            )
            .await;
            let missing = get_with(
                &app,
                &path.replace("{id}", "cb-nobody"),
                &erin,
                Some(&format!("account:cb-nobody:{version}")),
            )
            .await;
            assert_eq!(
                theirs.0,
                StatusCode::NOT_FOUND,
                "{path} at version {version}: {}",
                theirs.1
            );
            assert_eq!(theirs.1["code"], "not_found");
            assert_eq!(
                (theirs.0, theirs.1.to_string().replace("cb-theirs", "X")),
                (missing.0, missing.1.to_string().replace("cb-nobody", "X")),
                "{path} at version {version}: someone else's account answers unlike a missing one"
            );
        }
    }
    // Nor does a token naming their account, sent with a read of her own, tell her where it
    // is: it answers as a token naming no account at all.
    for version in [1, 4, 99] {
        for path in ["/v1/accounts/cb-mine", "/v1/accounts"] {
            let theirs = get_with(
                &app,
                path,
                &erin,
                Some(&format!("account:cb-theirs:{version}")),
            )
            .await;
            let missing = get_with(
                &app,
                path,
                &erin,
                Some(&format!("account:cb-nobody:{version}")),
            )
            .await;
            assert_eq!(
                (theirs.0, theirs.1.to_string().replace("cb-theirs", "X")),
                (missing.0, missing.1.to_string().replace("cb-nobody", "X")),
                "{path} with their token at version {version}"
            );
            assert!(
                !theirs.1.to_string().contains("it is at"),
                "{path}: {}",
                theirs.1
            );
        }
    }
    // Her own writes are still waited for.
    let (status, account) = get_with(
        &app,
        "/v1/accounts/cb-mine",
        &erin,
        Some("account:cb-mine:1"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{account}");
}

#[tokio::test]
async fn malformed_cursors_ids_and_nul_bytes_are_400_problems() {
    let app = TestApp::spawn().await;
    tests::client::accepted(
        &app.send(
            "account.open",
            json!({"account_id": "bad-in", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    let admin = tests::app::admin_token();
    let client = reqwest::Client::new();
    for path in [
        // A multibyte character where hex digits belong.
        "/v1/accounts?cursor=c1a%C3%A9a",
        "/v1/accounts?cursor=c1%C3%A9",
        "/v1/accounts/bad-in/entries?cursor=c1a%C3%A9a",
        "/v1/accounts/bad-in/transfers?cursor=c1a%C3%A9a",
        "/v1/audit/account/bad-in/events?cursor=c1a%C3%A9a",
        // NUL, which PostgreSQL text cannot hold, in a path, a query and a cursor.
        "/v1/accounts/%00",
        "/v1/accounts/a%00b/entries",
        "/v1/accounts/%00/transfers",
        "/v1/accounts?owner=%00",
        "/v1/accounts?currency=EU%00",
        "/v1/accounts?cursor=c100",
        "/v1/accounts/bad-in?consistency_token=account:%00:1",
        "/v1/audit/account/%00/events",
        "/v1/audit/%00/x/state?version=1",
        // Bytes that are not UTF-8.
        "/v1/accounts/%FF",
        "/v1/accounts?owner=%FF",
    ] {
        let response = client
            .get(format!("{}{path}", app.http_base))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: no answer at all ({e})"));
        let status = response.status();
        let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.text().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(content_type, "application/problem+json", "{path}: {body}");
        let problem: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["code"], "bad_request", "{path}");
    }
    // And the service still serves.
    let response = client
        .get(format!("{}/v1/accounts/bad-in", app.http_base))
        .bearer_auth(&admin)
        .header("Tally-Consistency-Token", "account:bad-in:1")
        .header("Tally-Wait-Ms", "5000")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_token_with_an_empty_owner_is_refused_on_both_sides() {
    let app = TestApp::spawn().await;
    let empty = token(&[Scope::AccountsRead, Scope::AccountsWrite], Some(""));
    let response = reqwest::Client::new()
        .get(format!("{}/v1/accounts", app.http_base))
        .bearer_auth(&empty)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "unauthenticated");
    assert!(
        problem["detail"].as_str().unwrap().contains("owner"),
        "{problem}"
    );
    let mut headers = HeaderMap::new();
    headers.insert("Authorization", format!("Bearer {empty}").as_str());
    let body = json!({"account_id": "eo-1", "owner": "anyone", "currency": "EUR"});
    let reply = app
        .send_raw("account.open", headers, serde_json::to_vec(&body).unwrap())
        .await;
    assert_eq!(
        tests::client::rejected_code(&reply),
        domain::ErrorCode::Unauthenticated
    );
}

/// A query-service of its own with `flags`, its base URL and how to stop it.
async fn query_service(
    app: &TestApp,
    flags: &[&str],
) -> (
    String,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let config = <query_service::Config as clap::Parser>::try_parse_from(
        std::iter::once("query-service".to_owned())
            .chain(app.service_flags())
            .chain([
                "--http-addr=127.0.0.1:0".to_owned(),
                tests::app::auth_flag(),
            ])
            .chain(flags.iter().map(|f| (*f).to_owned())),
    )
    .unwrap();
    let server = query_service::Application::build(config).await.unwrap();
    let base = format!("http://{}", server.http_addr());
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone()));
    (base, stop, task)
}

/// The value of the `tally_rate_limiter_keys{kind}` gauge.
async fn limiter_keys(base: &str, kind: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("tally_rate_limiter_keys{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn many_distinct_tokens_and_addresses_do_not_grow_the_rate_limiter_past_its_bound() {
    let app = TestApp::spawn().await;
    let (base, stop, task) = query_service(&app, &["--http-rate-keys-max=4"]).await;
    // Twelve distinct subjects, each within its own rate: the first four are tracked, the
    // rest refused while those four are still within their burst window.
    let mut answers = Vec::new();
    for i in 0..12 {
        let token = tests::app::mint_token(&format!("bound-{i}"), &[Scope::AccountsRead], None);
        let response = reqwest::Client::new()
            .get(format!("{base}/v1/accounts"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(response.headers().contains_key("retry-after"));
            let problem: Value = response.json().await.unwrap();
            assert_eq!(problem["code"], "rate_limited");
        }
        answers.push(status);
    }
    assert_eq!(&answers[..4], [StatusCode::OK; 4]);
    assert!(answers[4..].contains(&StatusCode::TOO_MANY_REQUESTS));
    assert!(limiter_keys(&base, "token").await.unwrap() <= 4.0);
    // Unauthenticated clients from twelve loopback addresses: tracked apart from tokens, and
    // bounded alike.
    for i in 2..14u8 {
        let client = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, i]))
            .build()
            .unwrap();
        let status = client
            .get(format!("{base}/v1/accounts"))
            .bearer_auth("not-a-jwt")
            .send()
            .await
            .unwrap()
            .status();
        assert!(
            [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS].contains(&status),
            "{status}"
        );
    }
    assert!(limiter_keys(&base, "address").await.unwrap() <= 4.0);
    // Address floods do not lock tokens out, and an idle client's state is dropped: once the
    // first subjects' bursts have refilled, new subjects are served again.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let token = tests::app::mint_token("bound-late", &[Scope::AccountsRead], None);
    let response = reqwest::Client::new()
        .get(format!("{base}/v1/accounts"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(limiter_keys(&base, "token").await.unwrap() <= 4.0);
    stop.cancel();
    task.await.unwrap().unwrap();
}
