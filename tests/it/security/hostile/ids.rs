//! Other actors' command ids: replaying or reusing an id someone else used first, or one the
//! process manager would derive for a transfer's steps, gets nothing of theirs and stops
//! nothing of theirs.

use async_nats::HeaderMap;
use domain::{CommandReply, ErrorCode};
use platform::auth::Scope;
use serde_json::{Value, json};
use tests::TestApp;
use tests::client::accepted;
use uuid::Uuid;

use crate::security::send_as;

/// Sends `body` as `command` with command id `id` and `token`.
async fn send_id_as(
    app: &TestApp,
    command: &str,
    id: Uuid,
    body: &Value,
    token: &str,
) -> CommandReply {
    let mut headers = HeaderMap::new();
    headers.insert("Tally-Command-Id", id.to_string().as_str());
    headers.insert("Authorization", format!("Bearer {token}").as_str());
    app.send_raw(command, headers, serde_json::to_vec(body).unwrap())
        .await
}

/// The reply's error code as on the wire (`accepted` for an acceptance).
fn wire_code(reply: &CommandReply) -> String {
    serde_json::to_value(reply).unwrap()["error"]["code"]
        .as_str()
        .unwrap_or("accepted")
        .to_owned()
}

/// A reused command id is refused as such, and tells nothing of the command that has it.
fn assert_mismatch(reply: &CommandReply, first: &CommandReply, what: &str) {
    assert_eq!(
        wire_code(reply),
        "idempotency_mismatch",
        "{what}: {reply:?}"
    );
    let text = serde_json::to_string(reply).unwrap();
    for secret in ["idem-a", "idem-m", "insufficient", "balance", "version"] {
        assert!(!text.contains(secret), "{what} leaks `{secret}`: {text}");
    }
    assert_eq!(reply.command_id(), first.command_id());
}

/// Issue 21 (finding 6, item 1): a command id is bound to the actor that used it first and to
/// that command (aggregate, name, body): a retry gets the first reply, any other use of the id
/// is refused with `idempotency_mismatch`, on every path that answers from the command log.
#[tokio::test]
async fn a_command_id_is_bound_to_its_first_sender_and_command() {
    let app = TestApp::spawn().await;
    let scopes = [Scope::AccountsWrite, Scope::TransfersWrite];
    let alice = tests::app::mint_token("alice@example", &scopes, None);
    let mallory = tests::app::mint_token("mallory@example", &scopes, None);
    for (id, token) in [("idem-a", &alice), ("idem-b", &alice), ("idem-m", &mallory)] {
        let body = json!({"account_id": id, "owner": "o", "currency": "EUR"});
        accepted(&send_as(&app, "account.open", &body, Some(token)).await);
    }
    let deposit_a = |amount: i64| json!({"account_id": "idem-a", "amount": amount});

    // An accepted command (the group-commit path, then the path alone on the log's key).
    let id = Uuid::new_v4();
    let first = send_id_as(&app, "account.deposit", id, &deposit_a(100), &alice).await;
    accepted(&first);
    let spelled_out =
        json!({"account_id": "idem-a", "amount": 100, "reference": "", "channel": "unspecified"});
    assert_eq!(
        send_id_as(&app, "account.deposit", id, &spelled_out, &alice).await,
        first,
        "the same command, its defaults spelled out, is a retry"
    );
    for (command, body, token, what) in [
        ("account.deposit", deposit_a(101), &alice, "another amount"),
        (
            "account.withdraw",
            deposit_a(100),
            &alice,
            "another command",
        ),
        (
            "account.deposit",
            deposit_a(100),
            &mallory,
            "another actor, the same body",
        ),
        (
            "account.deposit",
            json!({"account_id": "idem-m", "amount": 100}),
            &mallory,
            "another actor, another account",
        ),
    ] {
        let reply = send_id_as(&app, command, id, &body, token).await;
        assert_mismatch(&reply, &first, what);
    }
    assert_eq!(
        send_id_as(&app, "account.deposit", id, &deposit_a(100), &alice).await,
        first,
        "the first reply stands"
    );

    // A logged refusal.
    let id = Uuid::new_v4();
    let withdraw = json!({"account_id": "idem-a", "amount": 1_000_000});
    let refused = send_id_as(&app, "account.withdraw", id, &withdraw, &alice).await;
    assert_eq!(wire_code(&refused), "insufficient_funds");
    let reply = send_id_as(
        &app,
        "account.deposit",
        id,
        &json!({"account_id": "idem-m", "amount": 1}),
        &mallory,
    )
    .await;
    assert_mismatch(&reply, &refused, "a refusal's id reused");
    assert_eq!(
        send_id_as(&app, "account.withdraw", id, &withdraw, &alice).await,
        refused
    );

    // A transfer settled at once.
    let id = Uuid::new_v4();
    let transfer =
        json!({"transfer_id": Uuid::new_v4(), "from": "idem-a", "to": "idem-b", "amount": 10});
    let requested = send_id_as(&app, "transfer.request", id, &transfer, &alice).await;
    accepted(&requested);
    let reply = send_id_as(&app, "transfer.request", id, &transfer, &mallory).await;
    assert_mismatch(
        &reply,
        &requested,
        "a transfer's id reused by another actor",
    );
    assert_eq!(
        send_id_as(&app, "transfer.request", id, &transfer, &alice).await,
        requested
    );

    // A command with an expected version runs on the path alone.
    let id = Uuid::new_v4();
    let mut headers = HeaderMap::new();
    headers.insert("Tally-Command-Id", id.to_string().as_str());
    headers.insert("Tally-Expected-Version", "0");
    headers.insert("Authorization", format!("Bearer {alice}").as_str());
    let stale = app
        .send_raw(
            "account.freeze",
            headers,
            serde_json::to_vec(&json!({"account_id": "idem-a", "reason": "r"})).unwrap(),
        )
        .await;
    assert_eq!(wire_code(&stale), "conflict");
    let reply = send_id_as(
        &app,
        "account.freeze",
        id,
        &json!({"account_id": "idem-m", "reason": "r"}),
        &mallory,
    )
    .await;
    assert_mismatch(&reply, &stale, "an expected-version refusal's id reused");

    // The durable path: another sender reusing an id, and an id first used by a durable command
    // refused before its body was read.
    let results_inbox = format!("_INBOX.{}", app.subjects.prefix());
    let mut results = app
        .nats
        .subscribe(format!("{results_inbox}.>"))
        .await
        .unwrap();
    let publish = |id: Uuid, command: &'static str, body: Vec<u8>, token: String| {
        let app = &app;
        let reply_to = format!("{results_inbox}.{id}");
        async move {
            let mut headers = HeaderMap::new();
            headers.insert("Tally-Reply-To", reply_to.as_str());
            headers.insert("Nats-Msg-Id", Uuid::new_v4().to_string().as_str());
            headers.insert("Tally-Command-Id", id.to_string().as_str());
            headers.insert("Authorization", format!("Bearer {token}").as_str());
            app.jetstream
                .publish_with_headers(
                    format!("{}.jobs.{command}", app.subjects.prefix()),
                    headers,
                    body.into(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    let mut next_result = async || -> CommandReply {
        use futures::StreamExt;
        let message = tokio::time::timeout(std::time::Duration::from_secs(20), results.next())
            .await
            .expect("a durable result within 20 s")
            .unwrap();
        serde_json::from_slice(&message.payload).unwrap()
    };
    let claimed = Uuid::new_v4();
    let body = serde_json::to_vec(&json!({"account_id": "idem-m", "amount": 3})).unwrap();
    publish(claimed, "account.deposit", body, mallory.clone()).await;
    let durable = next_result().await;
    accepted(&durable);
    let body = serde_json::to_vec(&deposit_a(3)).unwrap();
    publish(claimed, "account.deposit", body, alice.clone()).await;
    assert_mismatch(
        &next_result().await,
        &durable,
        "a durable command's id reused",
    );
    let unread = Uuid::new_v4();
    publish(
        unread,
        "account.deposit",
        b"{not json".to_vec(),
        mallory.clone(),
    )
    .await;
    let unreadable = next_result().await;
    assert_eq!(wire_code(&unreadable), "invalid_json");
    let reply = send_id_as(&app, "account.deposit", unread, &deposit_a(3), &alice).await;
    assert_mismatch(
        &reply,
        &unreadable,
        "an unreadable durable command's id reused",
    );

    // Two senders racing one id on one busy account (one group, or not): one wins, the other
    // is refused, whatever the order.
    let raced = Uuid::new_v4();
    let body = json!({"account_id": "idem-m", "amount": 1});
    let mut sends = Vec::new();
    for i in 0..24 {
        let (id, token) = match i {
            11 => (raced, &alice),
            12 => (raced, &mallory),
            _ => (Uuid::new_v4(), &mallory),
        };
        sends.push(send_id_as(&app, "account.deposit", id, &body, token));
    }
    let replies = futures::future::join_all(sends).await;
    let (a, m) = (&replies[11], &replies[12]);
    match (wire_code(a).as_str(), wire_code(m).as_str()) {
        ("accepted", "idempotency_mismatch") | ("idempotency_mismatch", "accepted") => {}
        other => panic!("both senders of one id answered {other:?}: {a:?} {m:?}"),
    }

    // A row logged before the log kept its sender and command still answers any retry.
    let old = Uuid::new_v4();
    let stored =
        CommandReply::rejected(old, ErrorCode::Conflict, "from an older version", json!({}));
    sqlx::query(
        "INSERT INTO command_log (command_id, aggregate_type, aggregate_id, status, reply)
         VALUES ($1, 'account', 'idem-a', 'rejected', $2)",
    )
    .bind(old)
    .bind(sqlx::types::Json(&stored))
    .execute(&app.db)
    .await
    .unwrap();
    assert_eq!(
        send_id_as(&app, "account.deposit", old, &deposit_a(1), &mallory).await,
        stored
    );
}

/// Issue 21 (finding 6, item 2): a client that sends commands under the ids the process manager
/// would derive for a transfer's steps (as they were derived before: uuid v5 of the transfer
/// and the step) cannot stop that transfer.
#[tokio::test]
async fn a_client_claiming_the_ids_of_a_transfers_steps_does_not_stop_it() {
    let app = crate::transfers::spawn_steps().await;
    let mallory = tests::app::mint_token(
        "mallory@example",
        &[Scope::AccountsWrite, Scope::TransfersWrite],
        None,
    );
    for id in ["claim-a", "claim-b"] {
        let body = json!({"account_id": id, "owner": "mallory", "currency": "EUR"});
        accepted(&send_as(&app, "account.open", &body, Some(&mallory)).await);
    }
    let deposit = json!({"account_id": "claim-a", "amount": 100});
    accepted(&send_as(&app, "account.deposit", &deposit, Some(&mallory)).await);
    let transfer = Uuid::new_v4();
    let steps = [
        "debit",
        "record_debit",
        "fail_debit",
        "credit",
        "record_credit",
        "fail_credit",
        "settle",
        "complete",
        "refund",
        "record_refund",
    ];
    for (i, step) in steps.iter().enumerate() {
        let id = Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("tally:transfer:{transfer}:{step}").as_bytes(),
        );
        // Accepted, or refused and logged: either way that id's answer.
        let reply = if i % 2 == 0 {
            let body = json!({"account_id": "claim-b", "amount": 1});
            send_id_as(&app, "account.deposit", id, &body, &mallory).await
        } else {
            let body = json!({"account_id": "claim-b", "amount": 1_000_000});
            send_id_as(&app, "account.withdraw", id, &body, &mallory).await
        };
        let expected = if i % 2 == 0 {
            "accepted"
        } else {
            "insufficient_funds"
        };
        assert_eq!(wire_code(&reply), expected, "{step}");
    }
    let request =
        json!({"transfer_id": transfer, "from": "claim-a", "to": "claim-b", "amount": 40});
    let reply = send_as(&app, "transfer.request", &request, Some(&mallory)).await;
    let settled = crate::transfers::settled(&app, &reply).await;
    assert_eq!(settled["status"], "completed", "{settled}");
    crate::transfers::caught_up(&app, "claim-b").await;
    assert_eq!(crate::transfers::balance(&app, "claim-a").await, 60);
    assert_eq!(crate::transfers::balance(&app, "claim-b").await, 45);
}
