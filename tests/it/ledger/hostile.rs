//! A client holding only its own token (bound to owner `alice`) tries to move, reserve,
//! release or batch its way into `bob`'s money: every attempt answers as for an account (or a
//! hold) that does not exist, and writes nothing.

use domain::{CommandReply, ErrorCode};
use platform::auth::Scope;
use serde_json::json;
use tests::TestApp;
use tests::client::accepted;
use uuid::Uuid;

use super::{Books, item, leg, open, refusal, refused_writing_nothing, send_as, submit};

fn alice() -> String {
    tests::app::mint_token(
        "alice@example",
        &[Scope::AccountsWrite, Scope::TransfersWrite],
        Some("alice"),
    )
}

async fn two_owners(app: &TestApp) {
    open(app, "alice-1", "alice", "EUR", 1_000).await;
    open(app, "bob-1", "bob", "EUR", 1_000).await;
    open(app, "bob-usd", "bob", "USD", 1_000).await;
}

#[tokio::test]
async fn an_owner_token_cannot_post_legs_on_another_owners_account() {
    let app = TestApp::spawn().await;
    two_owners(&app).await;
    let alice = alice();
    let tx = |legs| json!({"transaction_id": Uuid::now_v7(), "legs": legs});
    refused_writing_nothing(
        &app,
        vec![
            (
                "transaction.post",
                tx(vec![leg("bob-1", "alice-1", 10, "EUR")]),
                ErrorCode::NotFound,
            ),
            // Her own first leg does not carry the other's through.
            (
                "transaction.post",
                tx(vec![
                    leg("alice-1", "bob-1", 1, "EUR"),
                    leg("bob-1", "alice-1", 500, "EUR"),
                ]),
                ErrorCode::NotFound,
            ),
            (
                "transaction.post",
                tx(vec![leg("@world:EUR", "bob-1", 10, "EUR")]),
                ErrorCode::NotFound,
            ),
            (
                "transaction.post",
                tx(vec![leg("bob-usd", "@exchange:USD", 10, "USD")]),
                ErrorCode::NotFound,
            ),
            (
                "hold.place",
                json!({"hold_id": Uuid::now_v7(), "account_id": "bob-1", "amount": 10}),
                ErrorCode::NotFound,
            ),
        ],
        Some(&alice),
    )
    .await;
    // Another owner's account answers as a missing one does: same code, message and details
    // (the id the client sent aside).
    let theirs = send_as(
        &app,
        "transaction.post",
        &tx(vec![leg("bob-1", "alice-1", 10, "EUR")]),
        Some(&alice),
    )
    .await;
    let missing = send_as(
        &app,
        "transaction.post",
        &tx(vec![leg("nobody", "alice-1", 10, "EUR")]),
        Some(&alice),
    )
    .await;
    let shape = |r: &CommandReply, id: &str| match r {
        CommandReply::Rejected { error, .. } => {
            serde_json::to_string(error).unwrap().replace(id, "<id>")
        }
        CommandReply::Accepted { .. } => String::new(),
    };
    assert_eq!(shape(&theirs, "bob-1"), shape(&missing, "nobody"));
    // To her own account, with her own token: fine, and to bob's as a destination too (as a
    // transfer to someone else is).
    accepted(
        &send_as(
            &app,
            "transaction.post",
            &tx(vec![leg("alice-1", "bob-1", 10, "EUR")]),
            Some(&alice),
        )
        .await,
    );
    let books = Books::read(&app).await;
    books.assert_balanced();
    assert_eq!(
        (books.balance("alice-1"), books.balance("bob-1")),
        (990, 1_010)
    );
}

#[tokio::test]
async fn an_owner_token_cannot_capture_or_void_another_owners_hold() {
    let app = TestApp::spawn().await;
    two_owners(&app).await;
    let hold = Uuid::now_v7();
    accepted(
        &app.send(
            "hold.place",
            json!({"hold_id": hold, "account_id": "bob-1", "amount": 300}),
        )
        .await,
    );
    let alice = alice();
    refused_writing_nothing(
        &app,
        vec![
            (
                "hold.capture",
                json!({"hold_id": hold, "to": "alice-1"}),
                ErrorCode::NotFound,
            ),
            (
                "hold.capture",
                json!({"hold_id": hold, "amount": 1, "to": "alice-1"}),
                ErrorCode::NotFound,
            ),
            ("hold.void", json!({"hold_id": hold}), ErrorCode::NotFound),
        ],
        Some(&alice),
    )
    .await;
    let books = Books::read(&app).await;
    assert_eq!((books.balance("bob-1"), books.held("bob-1")), (1_000, 300));
    // And not by the unknown-hold route either: the same answer as a hold never placed.
    let theirs = send_as(&app, "hold.void", &json!({"hold_id": hold}), Some(&alice)).await;
    let never = send_as(
        &app,
        "hold.void",
        &json!({"hold_id": Uuid::now_v7()}),
        Some(&alice),
    )
    .await;
    assert_eq!(refusal(&theirs).0, refusal(&never).0);
}

#[tokio::test]
async fn a_batch_cannot_smuggle_a_command_on_another_owners_account() {
    let app = TestApp::spawn().await;
    two_owners(&app).await;
    let alice = alice();
    let smuggled = || {
        vec![
            item(
                "account.deposit",
                json!({"account_id": "alice-1", "amount": 5}),
            ),
            item(
                "account.withdraw",
                json!({"account_id": "bob-1", "amount": 5}),
            ),
            item(
                "transaction.post",
                json!({"transaction_id": Uuid::now_v7(), "legs": [leg("bob-1", "alice-1", 5, "EUR")]}),
            ),
            item(
                "account.set_limits",
                json!({"account_id": "alice-1", "overdraft_limit": 10_000, "reason": "r"}),
            ),
        ]
    };
    // All or nothing: the first refusal is the batch's, and nothing is written.
    let before = Books::read(&app).await;
    let atomic: Vec<_> = smuggled().into_iter().take(2).collect();
    let results = submit(&app, true, &atomic, Some(&alice)).await.results();
    assert_eq!(results.len(), 2);
    assert_eq!(refusal(&results[1]).0, ErrorCode::NotFound, "{results:?}");
    let (code, details) = refusal(&results[0]);
    assert_eq!(code, ErrorCode::Conflict, "{results:?}");
    assert_eq!(details["refused_index"], 1);
    assert_eq!(Books::read(&app).await, before);

    // One by one: hers is written, the others are refused as their own commands would be.
    let results = submit(&app, false, &smuggled(), Some(&alice))
        .await
        .results();
    assert!(
        matches!(results[0], CommandReply::Accepted { .. }),
        "{results:?}"
    );
    assert_eq!(refusal(&results[1]).0, ErrorCode::NotFound);
    assert_eq!(refusal(&results[2]).0, ErrorCode::NotFound);
    assert_eq!(refusal(&results[3]).0, ErrorCode::Forbidden);
    let books = Books::read(&app).await;
    assert_eq!(
        (books.balance("alice-1"), books.balance("bob-1")),
        (1_005, 1_000)
    );
    assert_eq!(books.version("bob-1"), before.version("bob-1"));
    assert_eq!(books.accounts["alice-1"].1.overdraft_limit, 0);
}
