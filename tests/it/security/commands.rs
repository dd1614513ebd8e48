//! Commands over NATS: authentication, scopes, owners, the recorded actor, the rate limit.

use domain::{CommandReply, ErrorCode};
use platform::auth::Scope;
use serde_json::{Value, json};
use tests::TestApp;
use tests::client::{accepted, rejected_code};
use uuid::Uuid;

use super::{bad_tokens, send_as, token};

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

/// A failed transfer is read by both its parties: what it records as the reason must not state
/// the source's balance to the destination's owner.
#[tokio::test]
async fn a_failed_transfer_shows_the_destination_nothing_of_the_sources_balance() {
    let app = TestApp::spawn().await;
    for (id, owner) in [("poor-alice", "alice"), ("rich-bob", "bob")] {
        let opened = app
            .send(
                "account.open",
                json!({"account_id": id, "owner": owner, "currency": "EUR"}),
            )
            .await;
        accepted(&opened);
        // Who may see the transfer is decided by its accounts' rows: wait for them.
        super::super::transfers::projected(&app, &opened).await;
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
