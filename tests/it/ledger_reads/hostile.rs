//! What an owner-bound token may not read, and input refused with a clear 400 problem.

use serde_json::{Value, json};
use tests::TestApp;
use tests::client::accepted;
use uuid::Uuid;

use super::{around_now, deposit, get, open, post, read_until, reader, token};

#[tokio::test]
async fn another_owners_statement_holds_transactions_and_the_books_are_hidden() {
    let app = TestApp::spawn().await;
    open(&app, "al-1", "alice", json!({})).await;
    open(&app, "bo-1", "bob", json!({})).await;
    open(&app, "ca-1", "carol", json!({})).await;
    deposit(&app, "al-1", 1_000).await;
    let (alice, bob, carol) = (reader("alice"), reader("bob"), reader("carol"));
    let hold = Uuid::now_v7();
    let placed = app
        .send(
            "hold.place",
            json!({"hold_id": hold, "account_id": "al-1", "amount": 10}),
        )
        .await;
    accepted(&placed);
    let (transaction, posted) = post(
        &app,
        json!([{"from": "al-1", "to": "bo-1", "amount": 25, "currency": "EUR"}]),
        json!({}),
    )
    .await;
    accepted(&posted);
    let holds = format!("/v1/holds/{hold}");
    let transaction_path = format!("/v1/transactions/{transaction}");
    read_until(&app, &holds, |_| true).await;
    read_until(&app, &transaction_path, |_| true).await;

    // Alice sees her own; Bob sees the transaction that paid him, nothing else of Alice's.
    for path in [
        format!("/v1/accounts/al-1/statement?{}", around_now()),
        "/v1/accounts/al-1/holds".to_owned(),
        holds.clone(),
        transaction_path.clone(),
    ] {
        assert_eq!(get(&app, &path, Some(&alice)).await.0, 200, "alice: {path}");
    }
    assert_eq!(get(&app, &transaction_path, Some(&bob)).await.0, 200);
    for (who, bearer) in [("bob", &bob), ("carol", &carol)] {
        for path in [
            format!("/v1/accounts/al-1/statement?{}", around_now()),
            "/v1/accounts/al-1/holds".to_owned(),
            holds.clone(),
        ] {
            let (status, problem) = get(&app, &path, Some(bearer)).await;
            assert_eq!(status, 404, "{who}: {path}: {problem}");
            assert_eq!(problem["code"], "not_found");
        }
    }
    let (status, problem) = get(&app, &transaction_path, Some(&carol)).await;
    assert_eq!((status, &problem["code"]), (404, &json!("not_found")));
    // A token naming what Carol cannot see changes nothing: the same 404, not a 409.
    for (path, reply) in [(&transaction_path, &posted), (&holds, &placed)] {
        let (status, _) = get(
            &app,
            &format!("{path}?consistency_token={}", token(reply)),
            Some(&carol),
        )
        .await;
        assert_eq!(status, 404, "{path}");
    }
    // The books as a whole span owners: forbidden to any owner-bound token.
    let (status, problem) = get(&app, "/v1/system-accounts", Some(&alice)).await;
    assert_eq!((status, &problem["code"]), (403, &json!("forbidden")));
    let page = read_until(&app, "/v1/system-accounts", |_| true).await;
    assert!(page["items"].is_array(), "{page}");
}

/// `(status, code, detail)` of GET `path` as the admin.
async fn problem(app: &TestApp, path: &str) -> (u16, Value, String) {
    let (status, body) = get(app, path, None).await;
    let detail = body["detail"].as_str().unwrap_or_default().to_owned();
    (status, body["code"].clone(), detail)
}

#[tokio::test]
async fn malformed_instants_periods_and_cursors_are_a_clear_400() {
    let app = TestApp::spawn().await;
    open(&app, "bad-1", "o", json!({})).await;
    deposit(&app, "bad-1", 5).await;
    let statement = "/v1/accounts/bad-1/statement";
    for (query, says) in [
        (
            "from=yesterday&to=2026-01-01T00%3A00%3A00Z",
            "from must be an RFC 3339 instant",
        ),
        (
            "from=2026-01-01T00%3A00%3A00Z&to=2026-13-01",
            "to must be an RFC 3339 instant",
        ),
        // An unencoded `+` arrives as a space: the message says how to send it.
        (
            "from=2026-01-01T00:00:00+01:00&to=2026-02-01T00%3A00%3A00Z",
            "%2B",
        ),
        (
            "from=2026-02-01T00%3A00%3A00Z&to=2026-01-01T00%3A00%3A00Z",
            "to must be after from",
        ),
        (
            "from=2020-01-01T00%3A00%3A00Z&to=2026-01-01T00%3A00%3A00Z",
            "at most 366 days",
        ),
        ("from=2026-01-01T00%3A00%3A00Z", "invalid query string"),
        (
            &format!("{}&cursor=c1zz", around_now()),
            "cursor is not one this API issued",
        ),
        (
            &format!("{}&cursor=c1{}", around_now(), hex("2026|x")),
            "cursor is not one this API issued",
        ),
        (
            &format!("{}&limit=0", around_now()),
            "limit must be between 1 and 500",
        ),
    ] {
        let (status, code, detail) = problem(&app, &format!("{statement}?{query}")).await;
        assert_eq!(
            (status, &code),
            (400, &json!("bad_request")),
            "{query}: {detail}"
        );
        assert!(detail.contains(says), "{query}: `{detail}` lacks `{says}`");
    }
    for path in [
        "/v1/accounts/bad-1/holds?cursor=garbage",
        "/v1/accounts/bad-1/holds?status=pending",
        "/v1/system-accounts?cursor=c1zz",
        "/v1/system-accounts?limit=501",
        "/v1/holds/0190b6a4-0000-7000-8000-000000000001?consistency_token=hold:x:settled",
        "/v1/transactions/0190b6a4-0000-7000-8000-000000000001?consistency_token=transaction:x",
    ] {
        let (status, code, detail) = problem(&app, path).await;
        assert_eq!(
            (status, &code),
            (400, &json!("bad_request")),
            "{path}: {detail}"
        );
    }
    // Not a UUID: no such hold or transaction, rather than a malformed request.
    for path in ["/v1/holds/nope", "/v1/transactions/nope"] {
        assert_eq!(problem(&app, path).await.0, 404, "{path}");
    }
}

fn hex(raw: &str) -> String {
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}
