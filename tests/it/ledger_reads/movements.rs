//! Transactions and holds as the read models show them, with the accounts and system accounts
//! they moved.

use serde_json::{Value, json};
use sqlx::Connection;
use tests::TestApp;
use tests::client::accepted;
use uuid::Uuid;

use super::{around_now, deposit, get, open, post, read_until, system_balance, token};

#[tokio::test]
async fn a_transaction_reads_with_its_legs_and_moves_every_side() {
    let app = TestApp::spawn().await;
    open(&app, "tx-a", "alice", json!({})).await;
    open(&app, "tx-b", "bob", json!({})).await;
    deposit(&app, "tx-a", 1_000).await;
    let (id, reply) = post(
        &app,
        json!([
            {"from": "tx-a", "to": "tx-b", "amount": 300, "currency": "EUR"},
            {"from": "tx-a", "to": "@fees:EUR", "amount": 5, "currency": "EUR"},
        ]),
        json!({"order": "42"}),
    )
    .await;
    assert_eq!(token(&reply), format!("transaction:{id}:1"));
    let (status, transaction) = get(
        &app,
        &format!("/v1/transactions/{id}?consistency_token={}", token(&reply)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{transaction}");
    assert_eq!(transaction["transaction_id"], id.to_string());
    assert_eq!(transaction["reference"], "order 42");
    assert_eq!(transaction["metadata"], json!({"order": "42"}));
    assert_eq!(transaction["legs"].as_array().unwrap().len(), 2);
    assert_eq!(transaction["legs"][1]["to"], "@fees:EUR");
    assert!(transaction["posted_at"].is_string());

    read_until(&app, "/v1/accounts/tx-a", |a| a["balance"] == 695).await;
    read_until(&app, "/v1/accounts/tx-b", |a| a["balance"] == 300).await;
    assert_eq!(system_balance(&app, "@fees:EUR").await, 5);
    assert_eq!(system_balance(&app, "@world:EUR").await, -1_000);
    // One entry per transaction on each account, with the legs that touched it.
    let (_, entries) = get(&app, "/v1/accounts/tx-a/entries", None).await;
    let last = &entries["items"][1];
    assert_eq!(last["transaction_id"], id.to_string(), "{entries}");
    assert_eq!(
        (last["direction"].clone(), last["amount"].clone()),
        (json!("debit"), json!(305))
    );
    assert_eq!(last["legs"][1]["counterparty"], "@fees:EUR");
    assert_eq!(last["legs"][1]["amount"], -5);
    let statement_path = format!("/v1/accounts/tx-b/statement?{}", around_now());
    let (_, statement) = get(&app, &statement_path, None).await;
    assert_eq!(statement["closing_balance"], 300, "{statement}");
    assert_eq!(statement["entries"][0]["legs"][0]["counterparty"], "tx-a");
}

/// Places a hold of `amount` on `account`; its id and reply.
async fn place(app: &TestApp, account: &str, amount: i64) -> (Uuid, String) {
    let hold = Uuid::now_v7();
    let reply = app
        .send(
            "hold.place",
            json!({"hold_id": hold, "account_id": account, "amount": amount, "reference": "card"}),
        )
        .await;
    accepted(&reply);
    (hold, token(&reply))
}

async fn hold_view(app: &TestApp, hold: Uuid, token: &str) -> Value {
    let (status, view) = get(
        app,
        &format!("/v1/holds/{hold}?consistency_token={token}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{view}");
    view
}

#[tokio::test]
async fn holds_reserve_then_capture_or_void_and_list_by_account() {
    let app = TestApp::spawn().await;
    open(&app, "hd-a", "alice", json!({})).await;
    open(&app, "hd-b", "bob", json!({})).await;
    deposit(&app, "hd-a", 1_000).await;
    let (first, placed) = place(&app, "hd-a", 200).await;
    assert_eq!(placed, format!("hold:{first}:1"));
    let view = hold_view(&app, first, &placed).await;
    assert_eq!(
        (view["status"].clone(), view["amount"].clone()),
        (json!("held"), json!(200))
    );
    assert_eq!(view["reference"], "card");
    read_until(&app, "/v1/accounts/hd-a", |a| {
        a["held"] == 200 && a["available"] == 800 && a["balance"] == 1_000
    })
    .await;

    let captured = app
        .send(
            "hold.capture",
            json!({"hold_id": first, "amount": 150, "to": "hd-b"}),
        )
        .await;
    let view = hold_view(&app, first, &token(&captured)).await;
    assert_eq!(view["status"], "captured", "{view}");
    assert_eq!(view["captured_amount"], 150);
    assert_eq!(view["captured_to"], "hd-b");
    assert!(view["ended_at"].is_string());
    read_until(&app, "/v1/accounts/hd-a", |a| {
        a["held"] == 0 && a["balance"] == 850 && a["available"] == 850
    })
    .await;
    read_until(&app, "/v1/accounts/hd-b", |a| a["balance"] == 150).await;
    let (_, entries) = get(&app, "/v1/accounts/hd-a/entries", None).await;
    assert_eq!(
        entries["items"][1]["transaction_id"],
        first.to_string(),
        "{entries}"
    );

    let (second, placed) = place(&app, "hd-a", 100).await;
    hold_view(&app, second, &placed).await;
    let voided = app.send("hold.void", json!({"hold_id": second})).await;
    assert_eq!(
        hold_view(&app, second, &token(&voided)).await["status"],
        "voided"
    );
    read_until(&app, "/v1/accounts/hd-a", |a| {
        a["held"] == 0 && a["balance"] == 850
    })
    .await;
    // A voided hold moved nothing: the world's side is the one deposit.
    assert_eq!(system_balance(&app, "@world:EUR").await, -1_000);

    // Listed oldest first, a page at a time, and filtered by status.
    let (_, page) = get(&app, "/v1/accounts/hd-a/holds?limit=1", None).await;
    assert_eq!(page["items"][0]["hold_id"], first.to_string(), "{page}");
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, next) = get(
        &app,
        &format!("/v1/accounts/hd-a/holds?limit=1&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(next["items"][0]["hold_id"], second.to_string(), "{next}");
    assert!(next["next_cursor"].is_null(), "{next}");
    let (_, voided) = get(&app, "/v1/accounts/hd-a/holds?status=voided", None).await;
    assert_eq!(voided["items"].as_array().unwrap().len(), 1, "{voided}");
    let (status, _) = get(&app, "/v1/accounts/nobody/holds", None).await;
    assert_eq!(status, 404);
}

/// The ledger's read models as text, system accounts summed over their partitions' rows.
async fn ledger_rows(app: &TestApp) -> Vec<String> {
    let mut rows = Vec::new();
    for sql in [
        "SELECT (to_jsonb(a) - 'feed_partition' - 'feed_position')::text FROM accounts a ORDER BY account_id",
        "SELECT (to_jsonb(e) - 'feed_partition' - 'feed_position')::text FROM account_entries e ORDER BY account_id, sequence",
        "SELECT to_jsonb(t)::text FROM currency_totals t ORDER BY currency",
        "SELECT account || ' ' || currency || ' ' || sum(balance)::text
         FROM system_account_balances GROUP BY account, currency ORDER BY account",
        "SELECT to_jsonb(t)::text FROM transactions t ORDER BY transaction_id",
        "SELECT to_jsonb(h)::text FROM holds h ORDER BY hold_id",
    ] {
        let part: Vec<String> = sqlx::query_scalar(sql).fetch_all(&app.db).await.unwrap();
        rows.extend(part);
    }
    rows
}

#[tokio::test]
async fn rebuilds_of_the_ledger_read_models_equal_the_live_ones() {
    let app = TestApp::spawn().await;
    open(&app, "rb-a", "alice", json!({"k": "v"})).await;
    open(&app, "rb-b", "bob", json!({})).await;
    deposit(&app, "rb-a", 1_000).await;
    let (id, posted) = post(
        &app,
        json!([
            {"from": "rb-a", "to": "rb-b", "amount": 100, "currency": "EUR"},
            {"from": "rb-a", "to": "@fees:EUR", "amount": 1, "currency": "EUR"},
        ]),
        json!({"n": "1"}),
    )
    .await;
    get(
        &app,
        &format!("/v1/transactions/{id}?consistency_token={}", token(&posted)),
        None,
    )
    .await;
    let (open_hold, placed) = place(&app, "rb-a", 50).await;
    hold_view(&app, open_hold, &placed).await;
    let (captured, placed) = place(&app, "rb-a", 20).await;
    hold_view(&app, captured, &placed).await;
    let reply = app
        .send(
            "hold.capture",
            json!({"hold_id": captured, "to": "@world:EUR"}),
        )
        .await;
    hold_view(&app, captured, &token(&reply)).await;
    read_until(&app, "/v1/accounts/rb-a", |a| {
        a["balance"] == 879 && a["held"] == 50
    })
    .await;
    read_until(&app, "/v1/accounts/rb-b", |a| a["balance"] == 100).await;
    let live = ledger_rows(&app).await;
    assert!(
        live.iter().any(|r| r.starts_with("@fees:EUR EUR 1")),
        "{live:#?}"
    );
    assert!(
        live.iter().any(|r| r.starts_with("@world:EUR EUR -980")),
        "{live:#?}"
    );

    for projection in ["accounts", "transactions", "holds"] {
        let conn = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
        projections::rebuild::rebuild(&app.db, conn, projection, |_| {})
            .await
            .unwrap_or_else(|e| panic!("rebuild of {projection}: {e}"));
    }
    assert_eq!(ledger_rows(&app).await, live);
}
