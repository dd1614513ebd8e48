//! The query-service's in-memory account rows (`read_cache`): an account's next event retires
//! its cached row long before the row's time to live, a consistency token is never answered
//! with a row older than it, and another owner's cached account stays invisible.

use std::time::{Duration, Instant};

use clap::Parser;
use domain::CommandReply;
use serde_json::{Value, json};
use tests::TestApp;
use tests::app::{TEST_AUTH_SECRET, mint_token};
use tokio_util::sync::CancellationToken;

fn token(reply: &CommandReply) -> String {
    match reply {
        CommandReply::Accepted {
            consistency_token, ..
        } => consistency_token.clone(),
        other => panic!("not accepted: {other:?}"),
    }
}

#[tokio::test]
async fn cached_rows_are_retired_by_events_and_never_outrun_a_token() {
    let app = TestApp::spawn().await;
    // A query-service of the test's own whose rows would live ten minutes if only their time to
    // live retired them.
    let args = std::iter::once("query-service".to_owned())
        .chain(app.service_flags())
        .chain([
            format!("--auth-hs256-secret={TEST_AUTH_SECRET}"),
            "--http-addr=127.0.0.1:0".to_owned(),
            "--read-cache-ttl-ms=600000".to_owned(),
        ]);
    let config = query_service::Config::try_parse_from(args).unwrap();
    let service = query_service::Application::build(config).await.unwrap();
    let base = format!("http://{}", service.http_addr());
    let stop = CancellationToken::new();
    let task = tokio::spawn(service.run(stop.clone()));
    let get = |token: Option<String>, bearer: Option<String>| {
        let mut request = app.http.get(format!("{base}/v1/accounts/rc"));
        if let Some(token) = token {
            request = request
                .header("Tally-Consistency-Token", token)
                .header("Tally-Wait-Ms", "5000");
        }
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        async move { request.send().await.unwrap() }
    };
    let version = |account: &Value| account["version"].as_i64().unwrap_or(-1);

    let opened = app
        .send(
            "account.open",
            json!({"account_id": "rc", "owner": "alice", "currency": "EUR"}),
        )
        .await;
    let first: Value = get(Some(token(&opened)), None).await.json().await.unwrap();
    assert_eq!(version(&first), 1);
    // Served from memory now (the hit counter below says so), and still version 1.
    for _ in 0..20 {
        let again: Value = get(None, None).await.json().await.unwrap();
        assert_eq!(version(&again), 1);
    }

    // No token: the deposit's event retires the cached row, so version 2 shows within
    // seconds, not ten minutes.
    app.send("account.deposit", json!({"account_id": "rc", "amount": 5}))
        .await;
    let started = Instant::now();
    loop {
        let now: Value = get(None, None).await.json().await.unwrap();
        if version(&now) == 2 {
            assert_eq!(now["balance"], 5);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "cached version {} still served after its account moved on",
            version(&now)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // With a token: never the cached version 2, on the first try, every time.
    for i in 3..=30i64 {
        let reply = app
            .send("account.deposit", json!({"account_id": "rc", "amount": 1}))
            .await;
        let read: Value = get(Some(token(&reply)), None).await.json().await.unwrap();
        assert!(
            version(&read) >= i,
            "token of version {i} answered with {read}"
        );
    }

    // Cached, yet another owner's: as absent as a missing account.
    let bob = mint_token("bob", &[platform::auth::Scope::AccountsRead], Some("bob"));
    let response = get(None, Some(bob)).await;
    assert_eq!(response.status(), 404);
    let alice = mint_token(
        "alice",
        &[platform::auth::Scope::AccountsRead],
        Some("alice"),
    );
    assert_eq!(get(None, Some(alice)).await.status(), 200);

    let metrics = app
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let hits: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tally_read_cache_hits_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(hits >= 20, "the cache answered {hits} reads:\n{metrics}");
    stop.cancel();
    task.await.unwrap().unwrap();
}
