//! The ledger's read side over HTTP: balances posted, held and available with limits and
//! metadata, system accounts, statements, transactions and holds; what an owner-bound token
//! may not see, and bad input refused with a clear 400.

use std::time::{Duration, Instant};

use domain::CommandReply;
use platform::auth::Scope;
use serde_json::{Value, json};
use tests::TestApp;
use tests::app::mint_token;
use tests::client::accepted;
use uuid::Uuid;

mod hostile;
mod movements;

/// The consistency token of an accepted reply.
pub(crate) fn token(reply: &CommandReply) -> String {
    match reply {
        CommandReply::Accepted {
            consistency_token, ..
        } => consistency_token.clone(),
        other => panic!("not accepted: {other:?}"),
    }
}

/// A read-only token bound to `owner`.
pub(crate) fn reader(owner: &str) -> String {
    mint_token(owner, &[Scope::AccountsRead], Some(owner))
}

/// GET `path` with `bearer` (the admin's when `None`): status and JSON body.
pub(crate) async fn get(app: &TestApp, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let admin = tests::app::admin_token();
    let response = app
        .http
        .get(format!("{}{path}", app.http_base))
        .bearer_auth(bearer.unwrap_or(&admin))
        .send()
        .await
        .expect("query-service answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// GET `path` as the admin until `done` holds of its 200 body (panics after 15 s).
pub(crate) async fn read_until(app: &TestApp, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = get(app, path, None).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path}: still {status} {body}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A system account's balance as `/v1/system-accounts` shows it (0 when absent).
pub(crate) async fn system_balance(app: &TestApp, account: &str) -> i128 {
    let (status, page) = get(app, "/v1/system-accounts?limit=500", None).await;
    assert_eq!(status, 200, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["account"] == account)
        .map_or(0, |item| item["balance"].as_str().unwrap().parse().unwrap())
}

pub(crate) async fn open(app: &TestApp, id: &str, owner: &str, metadata: Value) -> CommandReply {
    let reply = app
        .send(
            "account.open",
            json!({"account_id": id, "owner": owner, "currency": "EUR", "metadata": metadata}),
        )
        .await;
    accepted(&reply);
    reply
}

pub(crate) async fn deposit(app: &TestApp, id: &str, amount: i64) -> CommandReply {
    let reply = app
        .send(
            "account.deposit",
            json!({"account_id": id, "amount": amount, "reference": "in"}),
        )
        .await;
    accepted(&reply);
    reply
}

#[tokio::test]
async fn accounts_show_posted_held_available_limits_and_metadata() {
    let app = TestApp::spawn().await;
    let opened = open(&app, "rd-1", "alice", json!({"tier": "gold"})).await;
    let (status, account) = get(
        &app,
        &format!("/v1/accounts/rd-1?consistency_token={}", token(&opened)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{account}");
    assert_eq!(account["metadata"], json!({"tier": "gold"}));
    let reply = deposit(&app, "rd-1", 500).await;
    let (_, account) = get(
        &app,
        &format!("/v1/accounts/rd-1?consistency_token={}", token(&reply)),
        None,
    )
    .await;
    for (field, expected) in [
        ("balance", json!(500)),
        ("held", json!(0)),
        ("available", json!(500)),
        ("overdraft_limit", json!(0)),
        ("max_balance", Value::Null),
    ] {
        assert_eq!(account[field], expected, "{field}: {account}");
    }
    // Listed the same way.
    let (_, page) = get(&app, "/v1/accounts?owner=alice", None).await;
    assert_eq!(page["items"][0]["available"], 500, "{page}");
    assert_eq!(page["items"][0]["metadata"]["tier"], "gold", "{page}");

    // Limits show, and an overdraft takes the posted balance (and the totals) below zero.
    let limited = app
        .send(
            "account.set_limits",
            json!({"account_id": "rd-1", "overdraft_limit": 300, "max_balance": 10_000, "reason": "credit line"}),
        )
        .await;
    accepted(&limited);
    let reply = app
        .send(
            "account.withdraw",
            json!({"account_id": "rd-1", "amount": 700, "reference": "rent"}),
        )
        .await;
    accepted(&reply);
    let (_, account) = get(
        &app,
        &format!("/v1/accounts/rd-1?consistency_token={}", token(&reply)),
        None,
    )
    .await;
    for (field, expected) in [
        ("balance", json!(-200)),
        ("available", json!(-200)),
        ("overdraft_limit", json!(300)),
        ("max_balance", json!(10_000)),
    ] {
        assert_eq!(account[field], expected, "{field}: {account}");
    }
    let (_, totals) = get(&app, "/v1/totals", None).await;
    assert_eq!(totals[0]["total_balance"], "-200", "{totals}");
    assert_eq!(system_balance(&app, "@world:EUR").await, 200);
}

#[tokio::test]
async fn deposits_and_withdrawals_are_the_world_accounts_other_side() {
    let app = TestApp::spawn().await;
    // Accounts in different partitions: the world's rows are summed over them.
    for i in 0..6 {
        open(&app, &format!("w-{i}"), "o", json!({})).await;
        deposit(&app, &format!("w-{i}"), 100 + i).await;
    }
    let reply = app
        .send(
            "account.withdraw",
            json!({"account_id": "w-0", "amount": 40, "reference": "out"}),
        )
        .await;
    accepted(&reply);
    let deposited: i128 = (0..6).map(|i| 100 + i).sum();
    let deadline = Instant::now() + Duration::from_secs(15);
    while system_balance(&app, "@world:EUR").await != -(deposited - 40) {
        assert!(Instant::now() < deadline, "@world:EUR never balanced");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The books balance: the world's side plus the clients' total is zero.
    let (_, totals) = get(&app, "/v1/totals", None).await;
    let clients: i128 = totals[0]["total_balance"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(clients + system_balance(&app, "@world:EUR").await, 0);
    let (status, page) = get(&app, "/v1/system-accounts?currency=EUR", None).await;
    assert_eq!(status, 200);
    assert_eq!(page["items"][0]["purpose"], "world", "{page}");
    assert_eq!(page["items"][0]["currency"], "EUR", "{page}");
    let (_, none) = get(&app, "/v1/system-accounts?currency=USD", None).await;
    assert_eq!(none["items"], json!([]));

    // A transfer passes through @transit (its two accounts may be in different partitions):
    // once both sides are applied, transit is back at zero and the world unchanged.
    let transfer = Uuid::now_v7();
    let reply = app
        .send(
            "transfer.request",
            json!({"transfer_id": transfer, "from": "w-1", "to": "w-2", "amount": 7, "reference": "t"}),
        )
        .await;
    accepted(&reply);
    read_until(&app, "/v1/accounts/w-2", |a| a["balance"] == 102 + 7).await;
    read_until(&app, "/v1/accounts/w-1", |a| a["balance"] == 101 - 7).await;
    let (_, page) = get(&app, "/v1/system-accounts", None).await;
    let transit = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["account"] == "@transit:EUR")
        .unwrap_or_else(|| panic!("no @transit:EUR: {page}"));
    assert_eq!(transit["balance"], "0", "{page}");
    assert_eq!(system_balance(&app, "@world:EUR").await, -(deposited - 40));
}

#[tokio::test]
async fn a_statement_has_opening_entries_and_closing_of_its_period() {
    let app = TestApp::spawn().await;
    open(&app, "st-1", "o", json!({})).await;
    for amount in [100, 50] {
        deposit(&app, "st-1", amount).await;
    }
    let reply = app
        .send(
            "account.withdraw",
            json!({"account_id": "st-1", "amount": 30, "reference": "out"}),
        )
        .await;
    let (_, entries) = get(
        &app,
        &format!(
            "/v1/accounts/st-1/entries?consistency_token={}",
            token(&reply)
        ),
        None,
    )
    .await;
    let at: Vec<String> = entries["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["recorded_at"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(at.len(), 3, "{entries}");
    let path = |from: &str, to: &str| {
        format!(
            "/v1/accounts/st-1/statement?from={}&to={}",
            urlencode(from),
            urlencode(to)
        )
    };
    // The whole history.
    let (status, whole) = get(&app, &path(&days_from_now(-1), &days_from_now(1)), None).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["opening_balance"], 0);
    assert_eq!(whole["closing_balance"], 120);
    assert_eq!(whole["currency"], "EUR");
    assert_eq!(whole["entries"].as_array().unwrap().len(), 3);
    // From the second entry on: opens after the first, closes as before.
    if at[0] != at[1] {
        let (_, later) = get(&app, &path(&at[1], &days_from_now(1)), None).await;
        assert_eq!(later["opening_balance"], 100, "{later}");
        assert_eq!(later["closing_balance"], 120, "{later}");
        assert_eq!(later["entries"].as_array().unwrap().len(), 2, "{later}");
    }
    // Up to the last entry, excluded: closes before it.
    if at[1] != at[2] {
        let (_, earlier) = get(&app, &path(&days_from_now(-1), &at[2]), None).await;
        assert_eq!(earlier["closing_balance"], 150, "{earlier}");
        assert_eq!(earlier["entries"].as_array().unwrap().len(), 2, "{earlier}");
    }
    // Page by page: the same entries, the same balances on every page.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut page_path = format!("{}&limit=1", path(&days_from_now(-1), &days_from_now(1)));
        if let Some(c) = &cursor {
            page_path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = get(&app, &page_path, None).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(
            (
                page["opening_balance"].clone(),
                page["closing_balance"].clone()
            ),
            (json!(0), json!(120))
        );
        seen.extend(
            page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["sequence"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(seen.len() <= 3, "pages never end: {seen:?}");
    }
    assert_eq!(seen, [2, 3, 4]);
}

/// An instant `days` from now (negative: ago), RFC 3339.
pub(crate) fn days_from_now(days: i64) -> String {
    (chrono::Utc::now() + chrono::TimeDelta::days(days)).to_rfc3339()
}

/// `from=...&to=...` from a day ago to a day ahead: a period holding every entry of a test.
pub(crate) fn around_now() -> String {
    format!(
        "from={}&to={}",
        urlencode(&days_from_now(-1)),
        urlencode(&days_from_now(1))
    )
}

/// Percent-encodes the characters of an RFC 3339 instant a query string would misread.
pub(crate) fn urlencode(raw: &str) -> String {
    raw.replace('+', "%2B").replace(':', "%3A")
}

/// Posts a transaction as the admin and returns its id and reply.
pub(crate) async fn post(app: &TestApp, legs: Value, metadata: Value) -> (Uuid, CommandReply) {
    let id = Uuid::now_v7();
    let reply = app
        .send(
            "transaction.post",
            json!({"transaction_id": id, "legs": legs, "reference": "order 42", "metadata": metadata}),
        )
        .await;
    (id, reply)
}
