//! The hostile review's findings on the ledger's commands, each as an attack that must fail:
//! another owner's figures in a refusal, money drawn from the operator's system accounts, a
//! retried atomic batch answered as refused, a command id repeated inside a batch.

use domain::ErrorCode;
use platform::auth::Scope;
use serde_json::json;
use tests::TestApp;
use tests::client::accepted;
use uuid::Uuid;

use crate::ledger::{Books, item, leg, open, refusal, send_as, submit};

fn owner_token(owner: &str, scopes: &[Scope]) -> String {
    tests::app::mint_token(&format!("{owner}@example"), scopes, Some(owner))
}

fn client(owner: &str) -> String {
    owner_token(owner, &[Scope::AccountsWrite, Scope::TransfersWrite])
}

#[tokio::test]
async fn a_refused_credit_to_another_owners_account_tells_no_figures() {
    let app = TestApp::spawn().await;
    open(&app, "att-alice", "alice", "EUR", 1_000).await;
    open(&app, "att-bob", "bob", "EUR", 700).await;
    accepted(
        &app.send(
            "account.set_limits",
            json!({"account_id": "att-bob", "overdraft_limit": 0, "max_balance": 750,
                   "reason": "test"}),
        )
        .await,
    );
    let before = Books::read(&app).await;
    let probe = json!({"transaction_id": Uuid::now_v7(),
                       "legs": [leg("att-alice", "att-bob", 100, "EUR")]});
    let reply = send_as(&app, "transaction.post", &probe, Some(&client("alice"))).await;
    let (code, details) = refusal(&reply);
    assert_eq!(code, ErrorCode::LimitExceeded);
    let domain::CommandReply::Rejected { error, .. } = &reply else {
        panic!("accepted: {reply:?}");
    };
    for figure in ["700", "750", "balance", "held"] {
        assert!(
            !error.message.contains(figure),
            "{figure} told to another owner: {}",
            error.message
        );
    }
    assert_eq!(details, json!({"leg": 0, "account_id": "att-bob"}));
    // The operator, bound to no owner, is told the figures.
    let reply = app.send("transaction.post", probe).await;
    assert_eq!(refusal(&reply).1["limit_value"], 750);
    assert_eq!(Books::read(&app).await.events, before.events);
}

#[tokio::test]
async fn an_owner_cannot_draw_on_the_operators_system_accounts() {
    let app = TestApp::spawn().await;
    open(&app, "sys-alice", "alice", "EUR", 1_000).await;
    open(&app, "sys-alice-usd", "alice", "USD", 0).await;
    let before = Books::read(&app).await;
    let alice = client("alice");
    for (legs, code) in [
        // Her fee back, or dollars without paying the euros: the operator's money.
        (
            vec![leg("@fees:EUR", "sys-alice", 10, "EUR")],
            ErrorCode::Forbidden,
        ),
        (
            vec![leg("@exchange:USD", "sys-alice-usd", 10, "USD")],
            ErrorCode::Forbidden,
        ),
        (
            vec![leg("sys-alice", "@transit:EUR", 10, "EUR")],
            ErrorCode::Forbidden,
        ),
    ] {
        let body = json!({"transaction_id": Uuid::now_v7(), "legs": legs});
        let reply = send_as(&app, "transaction.post", &body, Some(&alice)).await;
        assert_eq!(refusal(&reply).0, code, "{body}");
    }
    // With the scope but bound to an owner: still only @world into her own account.
    let admin_alice = owner_token("alice", &[Scope::Admin]);
    let body = json!({"transaction_id": Uuid::now_v7(),
                      "legs": [leg("@fees:EUR", "sys-alice", 10, "EUR")]});
    let reply = send_as(&app, "transaction.post", &body, Some(&admin_alice)).await;
    assert_eq!(refusal(&reply).0, ErrorCode::SchemaViolation);
    // Minting through @world needs what a deposit needs.
    let transfers_only = owner_token("alice", &[Scope::TransfersWrite]);
    let body = json!({"transaction_id": Uuid::now_v7(),
                      "legs": [leg("@world:EUR", "sys-alice", 10, "EUR")]});
    let reply = send_as(&app, "transaction.post", &body, Some(&transfers_only)).await;
    assert_eq!(refusal(&reply).0, ErrorCode::Forbidden);
    assert_eq!(Books::read(&app).await.events, before.events);
}

#[tokio::test]
async fn a_retried_atomic_batch_gets_its_first_replies_and_writes_nothing_more() {
    let app = TestApp::spawn().await;
    let items = vec![
        item(
            "account.open",
            json!({"account_id": "retry-a", "owner": "o", "currency": "EUR"}),
        ),
        item(
            "account.deposit",
            json!({"account_id": "retry-a", "amount": 100}),
        ),
    ];
    let first = submit(&app, true, &items, None).await.results();
    for reply in &first {
        accepted(reply);
    }
    let books = Books::read(&app).await;
    let again = submit(&app, true, &items, None).await.results();
    assert_eq!(again, first);
    assert_eq!(Books::read(&app).await.events, books.events);
    assert_eq!(Books::read(&app).await.balance("retry-a"), 100);
}

#[tokio::test]
async fn a_command_id_twice_in_one_batch_refuses_the_batch() {
    let app = TestApp::spawn().await;
    open(&app, "dup-a", "o", "EUR", 0).await;
    let id = Uuid::now_v7();
    let twice = |amount: i64| {
        json!({"command": "account.deposit", "command_id": id,
               "body": {"account_id": "dup-a", "amount": amount}})
    };
    for atomic in [false, true] {
        let answer = submit(&app, atomic, &[twice(1), twice(2)], None).await;
        let crate::ledger::BatchAnswer::Refused(reply) = answer else {
            panic!("a batch repeating a command id was run: {answer:?}");
        };
        assert_eq!(refusal(&reply).0, ErrorCode::SchemaViolation);
    }
    assert_eq!(Books::read(&app).await.balance("dup-a"), 0);
}
