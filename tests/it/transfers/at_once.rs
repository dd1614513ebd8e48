//! Transfers settled at once (`--transfer-settlement at-once`, the default): one transaction over
//! the transfer and both accounts, nothing left for the process manager, and no deadlock or lost
//! money when they race each other, deposits and withdrawals, and a second command-service.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cqrs_es::Aggregate;
use domain::account::AccountEvent;
use domain::{Account, CommandReply};
use serde_json::{Value, json};
use tests::TestApp;
use tests::binaries::workspace_binary;
use tests::child::free_port;
use uuid::Uuid;

use super::{balance, caught_up, open, request, settled};

/// Waits until the process manager has handled every event published so far.
async fn process_manager_idle(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stream = app.jetstream.get_stream(&app.streams.events).await.unwrap();
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .get_consumer(process_manager::CONSUMER)
            .await
            .unwrap();
        let info = consumer.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process manager still busy: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_transfer_at_once_is_one_transaction_over_three_aggregates() {
    let app = TestApp::spawn().await;
    open(&app, "a", "EUR", 100).await;
    open(&app, "b", "EUR", 0).await;
    let id = Uuid::now_v7();
    let reply = request(&app, id, "a", "b", 40).await;
    let CommandReply::Accepted { version, .. } = &reply else {
        panic!("not accepted: {reply:?}");
    };
    assert_eq!(*version, 2, "requested and completed");
    let transfer = settled(&app, &reply).await;
    assert_eq!(transfer["status"], "completed");

    let rows: Vec<(String, String, String, String, Value)> = sqlx::query_as(
        "SELECT tx_id::text, aggregate_type, aggregate_id, event_type, payload FROM events
         WHERE metadata ->> 'correlation_id' = $1 ORDER BY global_position",
    )
    .bind(id.to_string())
    .fetch_all(&app.db)
    .await
    .unwrap();
    let seen: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|(_, t, a, e, _)| (t.as_str(), a.as_str(), e.as_str()))
        .collect();
    let id_text = id.to_string();
    assert_eq!(
        seen,
        [
            ("transfer", id_text.as_str(), "TransferRequested"),
            ("transfer", id_text.as_str(), "TransferCompleted"),
            ("account", "a", "TransferDebited"),
            ("account", "b", "TransferCredited"),
        ]
    );
    // The debit is final: no hold on the source, so no settle event after it.
    assert_eq!(rows[2].4["TransferDebited"]["settled"], true, "{rows:?}");
    assert!(
        rows.iter().all(|r| r.0 == rows[0].0),
        "one transaction: {rows:?}"
    );
    assert_eq!(rows[0].4["TransferRequested"]["at_once"], true);

    // The process manager saw the events and sent nothing.
    process_manager_idle(&app).await;
    let logged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM command_log WHERE aggregate_id IN ($1, 'a', 'b')")
            .bind(id.to_string())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        logged,
        1 + 2 + 1,
        "the request, then only the opens and the deposit"
    );
    caught_up(&app, "a").await;
    caught_up(&app, "b").await;
    assert_eq!(
        (balance(&app, "a").await, balance(&app, "b").await),
        (60, 40)
    );

    // The same request again: the first reply, nothing written.
    let again = app
        .send_with_id(
            "transfer.request",
            reply.command_id(),
            json!({"transfer_id": id, "from": "a", "to": "b", "amount": 40, "reference": "test"}),
        )
        .await;
    assert_eq!(again, reply);
    // A new command for the same transfer id is refused as a duplicate transfer.
    let CommandReply::Rejected { error, .. } = request(&app, id, "a", "b", 40).await else {
        panic!("a second transfer with the same id was accepted");
    };
    assert_eq!(error.code, domain::ErrorCode::AlreadyExists);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(id.to_string())
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 2);
}

/// A command-service binary that is killed when this is dropped, so a failing assertion does
/// not leave it running after the test.
struct SecondInstance(Child);

impl Drop for SecondInstance {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn second_command_service(app: &TestApp) -> SecondInstance {
    let child = Command::new(workspace_binary("command-service"))
        .args(app.service_flags())
        .arg(format!("--ops-addr=127.0.0.1:{}", free_port()))
        .env(tests::app::TEST_AUTH_ENV.0, tests::app::TEST_AUTH_ENV.1)
        .env("TALLY_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("command-service binary (cargo build --workspace --bins): {e}"));
    SecondInstance(child)
}

const ACCOUNTS: usize = 4;
const OPENING: i64 = 1_000;
const SENDERS: usize = 8;
const PER_SENDER: usize = 60;

#[tokio::test]
async fn transfers_at_once_race_each_other_and_deposits_without_deadlock_or_lost_money() {
    let app = TestApp::spawn().await;
    for a in 0..ACCOUNTS {
        open(&app, &format!("r{a}"), "EUR", OPENING).await;
    }
    // A second instance in the same queue group: the two race on the same accounts, and only
    // the events' keys keep them apart.
    let other = second_command_service(&app);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let app = std::sync::Arc::new(app);
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let app = std::sync::Arc::clone(&app);
        senders.push(tokio::spawn(async move {
            // Net money this sender moved in (+) or out (-) of the accounts.
            let mut net = 0i64;
            for i in 0..PER_SENDER {
                let from = (s + i) % ACCOUNTS;
                // Both directions between every pair, so lock order matters.
                let to = if (s + i) % 2 == 0 {
                    (from + 1) % ACCOUNTS
                } else {
                    (from + ACCOUNTS - 1) % ACCOUNTS
                };
                let reply = match i % 4 {
                    0 => {
                        let reply = app
                            .send(
                                "account.deposit",
                                json!({"account_id": format!("r{from}"), "amount": 7}),
                            )
                            .await;
                        if matches!(reply, CommandReply::Accepted { .. }) {
                            net += 7;
                        }
                        reply
                    }
                    1 => {
                        let reply = app
                            .send(
                                "account.withdraw",
                                json!({"account_id": format!("r{to}"), "amount": 5}),
                            )
                            .await;
                        if matches!(reply, CommandReply::Accepted { .. }) {
                            net -= 5;
                        }
                        reply
                    }
                    _ => {
                        let amount = 1 + ((s * 31 + i * 17) % 400) as i64;
                        request(
                            &app,
                            Uuid::now_v7(),
                            &format!("r{from}"),
                            &format!("r{to}"),
                            amount,
                        )
                        .await
                    }
                };
                if let CommandReply::Rejected { error, .. } = &reply {
                    // Only the money may run short; contention is never a client's problem.
                    assert_eq!(
                        error.code,
                        domain::ErrorCode::InsufficientFunds,
                        "unexpected refusal: {error:?}"
                    );
                }
            }
            net
        }));
    }
    let mut net = 0;
    for sender in senders {
        net += sender.await.unwrap();
    }
    drop(other);

    // Every account folded from its events: no balance below zero, the total conserved.
    let rows: Vec<(String, Value)> = sqlx::query_as(
        "SELECT aggregate_id, payload FROM events WHERE aggregate_type = 'account'
         ORDER BY aggregate_id, sequence",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let mut accounts: std::collections::HashMap<String, Account> = Default::default();
    for (id, payload) in rows {
        let event: AccountEvent = serde_json::from_value(payload).unwrap();
        accounts.entry(id).or_default().apply(event);
    }
    let total: i64 = accounts.values().map(|a| a.balance).sum();
    assert_eq!(total, OPENING * ACCOUNTS as i64 + net);
    assert!(accounts.values().all(|a| a.transfers_in_flight.is_empty()));
    let (completed, unsettled): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE event_type = 'TransferCompleted'),
                count(DISTINCT aggregate_id) - count(*) FILTER (WHERE event_type IN ('TransferCompleted', 'TransferFailed'))
         FROM events WHERE aggregate_type = 'transfer'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(completed > 0, "no transfer completed");
    assert_eq!(unsettled, 0, "every transfer settled in its own write");
    // The read model agrees.
    for a in 0..ACCOUNTS {
        let id = format!("r{a}");
        caught_up(&app, &id).await;
        assert_eq!(balance(&app, &id).await, accounts[&id].balance, "{id}");
    }
}
