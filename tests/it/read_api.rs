//! The HTTP read API over the read models: single resources with ETags, filtered and paginated
//! lists, entries, totals, and read-your-writes with the command reply's token.

use domain::CommandReply;
use serde_json::{Value, json};
use tests::TestApp;
use tests::client::accepted;

fn token(reply: &CommandReply) -> String {
    match reply {
        CommandReply::Accepted {
            consistency_token, ..
        } => consistency_token.clone(),
        other => panic!("not accepted: {other:?}"),
    }
}

#[tokio::test]
async fn read_your_writes_on_the_first_try_every_time() {
    let app = TestApp::spawn().await;
    let opened = app
        .send(
            "account.open",
            json!({"account_id": "ryw", "owner": "o", "currency": "EUR"}),
        )
        .await;
    let response = app
        .http_get_with_token("/v1/accounts/ryw", &token(&opened))
        .await;
    assert_eq!(response.status(), 200);
    for i in 1..=1_000i64 {
        let reply = app
            .send("account.deposit", json!({"account_id": "ryw", "amount": 1}))
            .await;
        let response = app
            .http_get_with_token("/v1/accounts/ryw", &token(&reply))
            .await;
        assert_eq!(response.status(), 200, "iteration {i}");
        let account: Value = response.json().await.unwrap();
        assert_eq!(account["balance"], i, "iteration {i}: stale read");
        assert_eq!(account["version"], i + 1);
    }
    app.assert_no_skipped_events().await;
}

#[tokio::test]
async fn an_unreachable_token_answers_409_after_the_wait() {
    let app = TestApp::spawn().await;
    let response = app
        .http
        .get(format!("{}/v1/accounts/nobody", app.http_base))
        .header("Tally-Consistency-Token", "account:nobody:3")
        .header("Tally-Wait-Ms", "100")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "not_yet_consistent");
    // Without a token the API never waits: a plain 404.
    assert_eq!(app.http_get("/v1/accounts/nobody").await.status(), 404);
}

#[tokio::test]
async fn single_account_has_an_etag_and_honours_if_none_match() {
    let app = TestApp::spawn().await;
    let reply = app
        .send(
            "account.open",
            json!({"account_id": "et", "owner": "o", "currency": "EUR"}),
        )
        .await;
    let response = app
        .http_get_with_token("/v1/accounts/et", &token(&reply))
        .await;
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let again = app
        .http
        .get(format!("{}/v1/accounts/et", app.http_base))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let reply = app
        .send("account.deposit", json!({"account_id": "et", "amount": 5}))
        .await;
    let changed = app
        .http
        .get(format!("{}/v1/accounts/et", app.http_base))
        .header("If-None-Match", &etag)
        .header("Tally-Consistency-Token", token(&reply))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    assert_ne!(changed.headers()["etag"].to_str().unwrap(), etag);
}

#[tokio::test]
async fn lists_filter_and_paginate_stably() {
    let app = TestApp::spawn().await;
    let mut last = None;
    let mut tokens = Vec::new();
    for i in 0..25 {
        let owner = if i % 2 == 0 { "even" } else { "odd" };
        let reply = app
            .send(
                "account.open",
                json!({"account_id": format!("l{i:02}"), "owner": owner, "currency": "EUR"}),
            )
            .await;
        tokens.push(token(&reply));
        last = Some(reply);
    }
    let last_token = token(&last.unwrap());
    // Accounts of other projection partitions may still be on their way: wait for each (the
    // last one's token says nothing of the others').
    for (i, token) in tokens.iter().enumerate() {
        let read = app
            .http_get_with_token(&format!("/v1/accounts/l{i:02}"), token)
            .await;
        assert_eq!(read.status(), 200, "l{i:02} not in the read model");
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/v1/accounts?owner=even&limit=5".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page: Value = app
            .http_get_with_token(&path, &last_token)
            .await
            .json()
            .await
            .unwrap();
        for item in page["items"].as_array().unwrap() {
            assert_eq!(item["owner"], "even");
            seen.push(item["account_id"].as_str().unwrap().to_owned());
        }
        // An insert in the middle of paging does not shift later pages.
        if cursor.is_none() {
            accepted(
                &app.send(
                    "account.open",
                    json!({"account_id": "l00a", "owner": "even", "currency": "EUR"}),
                )
                .await,
            );
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).step_by(2).map(|i| format!("l{i:02}")).collect();
    assert_eq!(seen, expected);
    for bad in [
        "/v1/accounts?limit=501",
        "/v1/accounts?limit=0",
        "/v1/accounts?cursor=zz",
        "/v1/accounts?status=weird",
    ] {
        let response = app.http_get(bad).await;
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
}

#[tokio::test]
async fn entries_and_totals() {
    let app = TestApp::spawn().await;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "en", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    let mut last = None;
    for amount in 1..=7 {
        last = Some(
            app.send(
                "account.deposit",
                json!({"account_id": "en", "amount": amount, "reference": format!("r{amount}")}),
            )
            .await,
        );
    }
    let t = token(&last.unwrap());
    let first: Value = app
        .http_get_with_token("/v1/accounts/en/entries?limit=4", &t)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["items"].as_array().unwrap().len(), 4);
    assert_eq!(first["items"][3]["balance_after"], 10);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app
        .http_get(&format!("/v1/accounts/en/entries?limit=4&cursor={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    let amounts: Vec<i64> = second["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(amounts, [5, 6, 7]);
    assert!(second.get("next_cursor").is_none());
    assert_eq!(
        app.http_get("/v1/accounts/missing/entries").await.status(),
        404
    );

    let totals: Value = app.http_get("/v1/totals").await.json().await.unwrap();
    assert_eq!(
        totals,
        json!([{"currency": "EUR", "open_accounts": 1, "total_balance": "28"}])
    );
}

#[tokio::test]
async fn malformed_query_strings_are_problem_json_and_responses_compress() {
    let app = TestApp::spawn().await;
    let response = app.http_get("/v1/accounts?limit=lots").await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let response = app.http_get("/v1/accounts/x/entries?from=yesterday").await;
    assert_eq!(response.status(), 400);

    let reply = app
        .send(
            "account.open",
            json!({"account_id": "z", "owner": "someone with a long name", "currency": "EUR"}),
        )
        .await;
    let compressed = app
        .http
        .get(format!("{}/v1/accounts/z", app.http_base))
        .header("Accept-Encoding", "gzip")
        .header("Tally-Consistency-Token", token(&reply))
        .send()
        .await
        .unwrap();
    assert_eq!(compressed.status(), 200);
    assert_eq!(compressed.headers()["content-encoding"], "gzip");
}

#[tokio::test]
async fn the_served_openapi_document_is_the_checked_in_one() {
    let app = TestApp::spawn().await;
    let served = app.http_get("/openapi.json").await.text().await.unwrap();
    let checked_in =
        std::fs::read_to_string(tests::binaries::repo_root().join("schemas/openapi.json")).unwrap();
    assert_eq!(served, checked_in, "run `cargo xtask schemas`");
    let document: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    for path in [
        "/v1/accounts",
        "/v1/accounts/{account_id}",
        "/v1/accounts/{account_id}/entries",
        "/v1/totals",
        "/v1/commands/{command_id}",
    ] {
        assert!(
            document["paths"][path]["get"].is_object(),
            "{path} undocumented"
        );
    }
}
