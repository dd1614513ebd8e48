//! Commands over NATS: authentication, scopes, owners, the recorded actor, the rate limit.

use async_nats::HeaderMap;
use domain::{CommandReply, ErrorCode};
use platform::auth::Scope;
use serde_json::{Value, json};
use tests::TestApp;
use tests::client::{accepted, rejected_code};
use uuid::Uuid;

use super::{bad_tokens, token};

/// Every command subject with a body that would be valid.
fn every_command() -> Vec<(&'static str, Value)> {
    let t = Uuid::now_v7();
    let step = json!({"account_id": "sec-a", "transfer_id": t});
    let record = json!({"transfer_id": t});
    vec![
        (
            "account.open",
            json!({"account_id": "sec-new", "owner": "o", "currency": "EUR"}),
        ),
        (
            "account.deposit",
            json!({"account_id": "sec-a", "amount": 5}),
        ),
        (
            "account.withdraw",
            json!({"account_id": "sec-a", "amount": 5}),
        ),
        (
            "account.freeze",
            json!({"account_id": "sec-a", "reason": "r"}),
        ),
        ("account.unfreeze", json!({"account_id": "sec-a"})),
        ("account.close", json!({"account_id": "sec-a"})),
        ("account.debit", step.clone()),
        ("account.credit", step.clone()),
        ("account.refund", step.clone()),
        ("account.settle", step),
        (
            "transfer.request",
            json!({"transfer_id": t, "from": "sec-a", "to": "sec-b", "amount": 1}),
        ),
        ("transfer.record_debit", record.clone()),
        ("transfer.record_credit", record.clone()),
        ("transfer.complete", record.clone()),
        (
            "transfer.fail",
            json!({"transfer_id": t, "code": "x", "reason": "y"}),
        ),
        ("transfer.record_refund", record),
    ]
}

async fn send_as(app: &TestApp, command: &str, body: &Value, token: Option<&str>) -> CommandReply {
    let mut headers = HeaderMap::new();
    // An explicit empty value stands for "no token": the helper adds the admin's otherwise.
    headers.insert(
        "Authorization",
        token
            .map_or(String::new(), |t| format!("Bearer {t}"))
            .as_str(),
    );
    app.send_raw(command, headers, serde_json::to_vec(body).unwrap())
        .await
}

#[tokio::test]
async fn every_command_needs_a_valid_token_and_its_scope_and_nothing_is_written_otherwise() {
    let app = TestApp::spawn().await;
    super::super::transfers::open(&app, "sec-a", "EUR", 100).await;
    super::super::transfers::open(&app, "sec-b", "EUR", 0).await;
    let events = app.events_in_store().await;
    let logged = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM command_log")
            .fetch_one(&app.db)
            .await
            .unwrap()
    };
    let logged_before = logged().await;
    let read_only = token(&[Scope::AccountsRead, Scope::AuditRead], None);
    for (command, body) in every_command() {
        assert_eq!(
            rejected_code(&send_as(&app, command, &body, None).await),
            ErrorCode::Unauthenticated,
            "{command} without a token"
        );
        for (why, bad) in bad_tokens() {
            assert_eq!(
                rejected_code(&send_as(&app, command, &body, Some(&bad)).await),
                ErrorCode::Unauthenticated,
                "{command} with a token that is {why}"
            );
        }
        assert_eq!(
            rejected_code(&send_as(&app, command, &body, Some(&read_only)).await),
            ErrorCode::Forbidden,
            "{command} with a read-only token"
        );
    }
    // Each scope opens its own commands only; the process manager's steps need admin.
    let writer = token(&[Scope::AccountsWrite], None);
    let payer = token(&[Scope::TransfersWrite], None);
    for (command, body) in every_command() {
        let (aggregate, name) = command.split_once('.').unwrap();
        let writer_may =
            aggregate == "account" && !matches!(name, "debit" | "credit" | "refund" | "settle");
        let payer_may = command == "transfer.request";
        if !writer_may {
            assert_eq!(
                rejected_code(&send_as(&app, command, &body, Some(&writer)).await),
                ErrorCode::Forbidden,
                "{command} with accounts:write"
            );
        }
        if !payer_may {
            assert_eq!(
                rejected_code(&send_as(&app, command, &body, Some(&payer)).await),
                ErrorCode::Forbidden,
                "{command} with transfers:write"
            );
        }
    }
    assert_eq!(
        app.events_in_store().await,
        events,
        "a refusal wrote events"
    );
    assert_eq!(
        logged().await,
        logged_before,
        "a refusal wrote to the command log"
    );
}

#[tokio::test]
async fn the_actor_of_every_event_is_the_token_subject_and_the_process_manager_acts_as_itself() {
    // Settled step by step: the process manager's commands are what this checks.
    let app = super::super::transfers::spawn_steps().await;
    let alice = tests::app::mint_token(
        "alice@example",
        &[Scope::AccountsWrite, Scope::TransfersWrite],
        None,
    );
    for body in [
        json!({"account_id": "act-a", "owner": "alice", "currency": "EUR"}),
        json!({"account_id": "act-b", "owner": "bob", "currency": "EUR"}),
    ] {
        accepted(&send_as(&app, "account.open", &body, Some(&alice)).await);
    }
    accepted(
        &send_as(
            &app,
            "account.deposit",
            &json!({"account_id": "act-a", "amount": 100}),
            Some(&alice),
        )
        .await,
    );
    let id = Uuid::now_v7();
    let reply = send_as(
        &app,
        "transfer.request",
        &json!({"transfer_id": id, "from": "act-a", "to": "act-b", "amount": 40}),
        Some(&alice),
    )
    .await;
    super::super::transfers::settled(&app, &reply).await;
    let actors: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT aggregate_type, event_type, metadata->>'actor' FROM events ORDER BY global_position",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    for (aggregate, event, actor) in &actors {
        let expected = match event.as_str() {
            "AccountOpened" | "MoneyDeposited" | "TransferRequested" => "alice@example",
            _ => "process-manager",
        };
        assert_eq!(actor, expected, "{aggregate} {event}");
    }
    assert!(actors.len() >= 10, "{actors:?}");
}

#[tokio::test]
async fn an_owner_token_moves_only_its_owners_accounts_without_learning_of_others() {
    let app = TestApp::spawn().await;
    super::super::transfers::open(&app, "own-x", "EUR", 0).await; // owner "o"
    let carol = token(
        &[Scope::AccountsWrite, Scope::TransfersWrite],
        Some("carol"),
    );
    // Opening for another owner: forbidden; for herself: fine.
    assert_eq!(
        rejected_code(
            &send_as(
                &app,
                "account.open",
                &json!({"account_id": "own-c2", "owner": "dave", "currency": "EUR"}),
                Some(&carol)
            )
            .await
        ),
        ErrorCode::Forbidden
    );
    accepted(
        &send_as(
            &app,
            "account.open",
            &json!({"account_id": "own-c", "owner": "carol", "currency": "EUR"}),
            Some(&carol),
        )
        .await,
    );
    accepted(
        &send_as(
            &app,
            "account.deposit",
            &json!({"account_id": "own-c", "amount": 50}),
            Some(&carol),
        )
        .await,
    );
    let events = app.events_in_store().await;
    // Someone else's account answers exactly as a missing one.
    for (command, body) in [
        (
            "account.deposit",
            json!({"account_id": "own-x", "amount": 5}),
        ),
        (
            "account.freeze",
            json!({"account_id": "own-x", "reason": "r"}),
        ),
        (
            "transfer.request",
            json!({"transfer_id": Uuid::now_v7(), "from": "own-x", "to": "own-c", "amount": 1}),
        ),
    ] {
        let refused = send_as(&app, command, &body, Some(&carol)).await;
        let elsewhere: Value =
            serde_json::from_str(&body.to_string().replace("own-x", "never-was")).unwrap();
        let missing = send_as(&app, command, &elsewhere, Some(&carol)).await;
        assert_eq!(rejected_code(&refused), ErrorCode::NotFound, "{command}");
        // Code, message and details alike; the only difference allowed is the id the client
        // itself sent, which a message may echo.
        let error = |r: &CommandReply, id: &str| match r {
            CommandReply::Rejected { error, .. } => {
                serde_json::to_string(error).unwrap().replace(id, "<id>")
            }
            CommandReply::Accepted { .. } => String::new(),
        };
        assert_eq!(
            error(&refused, "own-x"),
            error(&missing, "never-was"),
            "{command} leaks existence"
        );
    }
    assert_eq!(app.events_in_store().await, events);
    // Paying someone else from her own account is what transfers are for.
    let reply = send_as(
        &app,
        "transfer.request",
        &json!({"transfer_id": Uuid::now_v7(), "from": "own-c", "to": "own-x", "amount": 20}),
        Some(&carol),
    )
    .await;
    let transfer = super::super::transfers::settled(&app, &reply).await;
    assert_eq!(transfer["status"], "completed");
}

#[tokio::test]
async fn a_burst_over_the_rate_is_refused_then_recovers() {
    let mut app = TestApp::spawn().await;
    app.stop_command_service().await;
    app.start_command_service(&["--command-rate-per-s=1", "--command-rate-burst=2"])
        .await;
    let busy = token(&[Scope::AccountsWrite], None);
    let mut limited = 0;
    let mut retry_after_ms = 0;
    for i in 0..20 {
        let reply = send_as(
            &app,
            "account.open",
            &json!({"account_id": format!("rate-{i}"), "owner": "o", "currency": "EUR"}),
            Some(&busy),
        )
        .await;
        if let CommandReply::Rejected { error, .. } = &reply {
            assert_eq!(error.code, ErrorCode::RateLimited, "{reply:?}");
            retry_after_ms = error.details["retry_after_ms"].as_u64().unwrap();
            limited += 1;
        }
    }
    assert!(limited >= 10, "only {limited} of 20 were limited");
    assert!(retry_after_ms > 0);
    // Another actor is not slowed by this one, and admins are never limited.
    accepted(
        &send_as(
            &app,
            "account.open",
            &json!({"account_id": "rate-other", "owner": "o", "currency": "EUR"}),
            Some(&tests::app::mint_token(
                "someone-else",
                &[Scope::AccountsWrite],
                None,
            )),
        )
        .await,
    );
    tokio::time::sleep(std::time::Duration::from_millis(retry_after_ms + 300)).await;
    accepted(
        &send_as(
            &app,
            "account.open",
            &json!({"account_id": "rate-late", "owner": "o", "currency": "EUR"}),
            Some(&busy),
        )
        .await,
    );
}

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
    let app = super::super::transfers::spawn_steps().await;
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
    let settled = super::super::transfers::settled(&app, &reply).await;
    assert_eq!(settled["status"], "completed", "{settled}");
    super::super::transfers::caught_up(&app, "claim-b").await;
    assert_eq!(super::super::transfers::balance(&app, "claim-a").await, 60);
    assert_eq!(super::super::transfers::balance(&app, "claim-b").await, 45);
}

/// A failed transfer is read by both its parties: what it records as the reason must not state
/// the source's balance to the destination's owner.
#[tokio::test]
async fn a_failed_transfer_shows_the_destination_nothing_of_the_sources_balance() {
    let app = TestApp::spawn().await;
    for (id, owner) in [("poor-alice", "alice"), ("rich-bob", "bob")] {
        accepted(
            &app.send(
                "account.open",
                json!({"account_id": id, "owner": owner, "currency": "EUR"}),
            )
            .await,
        );
    }
    accepted(
        &app.send(
            "account.deposit",
            json!({"account_id": "poor-alice", "amount": 1234567}),
        )
        .await,
    );
    let alice = token(&[Scope::TransfersWrite], Some("alice"));
    let reply = send_as(
        &app,
        "transfer.request",
        &json!({"transfer_id": Uuid::now_v7(), "from": "poor-alice", "to": "rich-bob", "amount": 7654321}),
        Some(&alice),
    )
    .await;
    let (transfer_id, _) = accepted(&reply);
    let transfer = super::super::transfers::settled(&app, &reply).await;
    assert_eq!(transfer["status"], "failed");
    assert_eq!(transfer["failure_code"], "insufficient_funds");
    let bob = token(&[Scope::AccountsRead], Some("bob"));
    let seen_by_bob = app
        .http
        .get(format!("{}/v1/transfers/{transfer_id}", app.http_base))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    let status = seen_by_bob.status();
    let body = seen_by_bob.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("1234567"), "{body}");
    let recorded: Vec<String> =
        sqlx::query_scalar("SELECT payload::text FROM events WHERE aggregate_type = 'transfer'")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert!(
        recorded.iter().all(|p| !p.contains("1234567")),
        "{recorded:?}"
    );
}

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
    super::super::transfers::caught_up(app, "race-bob").await;
    let bob = super::super::transfers::balance(app, "race-bob").await;
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
    let app = super::super::transfers::spawn_steps().await;
    requests_racing_an_open_for_another_owner_move_nothing(&app).await;
}
