//! Racing an owner check: transfers from an account id that another owner's account is being
//! opened under at the same moment.

use domain::CommandReply;
use platform::auth::Scope;
use serde_json::json;
use tests::TestApp;
use tests::client::accepted;
use uuid::Uuid;

use crate::security::{send_as, token};

/// Issue 21, finding 3: an owner token's transfers from an account id nobody has opened yet,
/// racing with an admin opening that id for another owner and funding it. Ownership must be
/// decided on the state the request is decided on, so none of them may move the money.
async fn requests_racing_an_open_for_another_owner_move_nothing(app: &TestApp) {
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "race-alice", "owner": "alice", "currency": "EUR"}),
        )
        .await,
    );
    let alice = token(&[Scope::TransfersWrite], Some("alice"));
    let request = |i: u64| {
        let alice = alice.clone();
        async move {
            // Spread over about 0.3 s, so requests arrive before, during and after the open.
            tokio::time::sleep(std::time::Duration::from_millis(i)).await;
            let body = json!({"transfer_id": Uuid::now_v7(), "from": "race-bob", "to": "race-alice", "amount": 10});
            send_as(app, "transfer.request", &body, Some(&alice)).await
        }
    };
    let opening = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        accepted(
            &app.send(
                "account.open",
                json!({"account_id": "race-bob", "owner": "bob", "currency": "EUR"}),
            )
            .await,
        );
        accepted(
            &app.send(
                "account.deposit",
                json!({"account_id": "race-bob", "amount": 1000}),
            )
            .await,
        );
    };
    let (replies, ()) = tokio::join!(futures::future::join_all((0..300).map(request)), opening);

    // Every answer is the one a missing account gets, before the open and after it alike.
    let missing = send_as(
        app,
        "transfer.request",
        &json!({"transfer_id": Uuid::now_v7(), "from": "race-never", "to": "race-alice", "amount": 10}),
        Some(&alice),
    )
    .await;
    let error = |reply: &CommandReply| match reply {
        CommandReply::Rejected { error, .. } => serde_json::to_string(error)
            .unwrap()
            .replace("race-never", "race-bob"),
        CommandReply::Accepted { .. } => format!("accepted: {reply:?}"),
    };
    let accepted_for_alice = replies
        .iter()
        .filter(|r| matches!(r, CommandReply::Accepted { .. }))
        .count();
    let unlike_missing: Vec<String> = replies
        .iter()
        .map(error)
        .filter(|e| *e != error(&missing))
        .collect();
    let requested_from_bob: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'transfer' \
         AND event_type = 'TransferRequested' AND payload->'TransferRequested'->>'from' = 'race-bob'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    // Steps settle after the reply: give the process manager time to debit, if it would.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    crate::transfers::caught_up(app, "race-bob").await;
    let bob = crate::transfers::balance(app, "race-bob").await;
    assert_eq!(
        (accepted_for_alice, requested_from_bob, bob),
        (0, 0, 1000),
        "(requests accepted, transfers from bob recorded, bob's balance); \
         answers unlike a missing account's: {} e.g. {:?}",
        unlike_missing.len(),
        unlike_missing.first()
    );
    assert!(unlike_missing.is_empty(), "{unlike_missing:?}");
}

#[tokio::test]
async fn an_owner_check_does_not_race_with_the_opening_of_the_account_at_once() {
    let app = TestApp::spawn().await;
    requests_racing_an_open_for_another_owner_move_nothing(&app).await;
}

#[tokio::test]
async fn an_owner_check_does_not_race_with_the_opening_of_the_account_step_by_step() {
    let app = crate::transfers::spawn_steps().await;
    requests_racing_an_open_for_another_owner_move_nothing(&app).await;
}
