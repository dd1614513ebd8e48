//! Audits against real servers: `tally audit verify` on an untouched store and after tampering
//! with rows directly in PostgreSQL, digests, history and state over HTTP, exports.

use domain::CommandReply;
use serde_json::{Value, json};
use tests::TestApp;
use tests::client::accepted;
use tests::tally_cli::stdout;

mod digests;
mod http;
mod ledger;

/// Opens `id` and deposits each amount; returns the last reply.
pub(super) async fn account_with_deposits(
    app: &TestApp,
    id: &str,
    amounts: &[i64],
) -> CommandReply {
    let mut last = app
        .send(
            "account.open",
            json!({"account_id": id, "owner": "auditor", "currency": "EUR"}),
        )
        .await;
    accepted(&last);
    for (i, amount) in amounts.iter().enumerate() {
        last = app
            .send(
                "account.deposit",
                json!({"account_id": id, "amount": amount, "reference": format!("dep-{i}")}),
            )
            .await;
        accepted(&last);
    }
    last
}

/// Waits until the read model has applied `reply`'s write.
pub(super) async fn wait_applied(app: &TestApp, id: &str, reply: &CommandReply) {
    let CommandReply::Accepted {
        consistency_token, ..
    } = reply
    else {
        panic!("not accepted: {reply:?}");
    };
    let response = app
        .http
        .get(format!("{}/v1/accounts/{id}", app.http_base))
        .header("Tally-Consistency-Token", consistency_token)
        .header("Tally-Wait-Ms", "5000")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

pub(super) async fn verify_json(app: &TestApp, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["--json", "audit", "verify"];
    args.extend_from_slice(extra);
    let output = app.tally(&args).await;
    let report: Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {output:?}"));
    (output.status.code(), report)
}

/// (kind, aggregate id, sequence) of every finding.
pub(super) fn findings(report: &Value) -> Vec<(String, String, i64)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["aggregate_id"].as_str().unwrap_or("").to_owned(),
                f["sequence"]
                    .as_i64()
                    .or(f["expected"].as_i64())
                    .unwrap_or(0),
            )
        })
        .collect()
}

#[tokio::test]
async fn verify_is_clean_then_names_each_tampered_event() {
    let app = TestApp::spawn().await;
    for id in ["t-a", "t-b", "t-c", "t-d"] {
        let last = account_with_deposits(&app, id, &[100, 250, 75]).await;
        wait_applied(&app, id, &last).await;
    }

    let (code, report) = verify_json(&app, &[]).await;
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["events"], 16);
    assert_eq!(report["aggregates"], 4);
    assert_eq!(report["read_models_compared"], 4);
    assert_eq!(report["findings_total"], 0);
    let human = app.tally(&["audit", "verify"]).await;
    assert!(stdout(&human).contains("OK: no findings"), "{human:?}");

    // One byte of one payload.
    sqlx::query(
        "UPDATE events SET payload = jsonb_set(payload, '{MoneyDeposited,reference}', '\"dep-X\"')
         WHERE aggregate_id = 't-a' AND sequence = 3",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let (code, report) = verify_json(&app, &[]).await;
    assert_eq!(code, Some(1));
    assert_eq!(findings(&report), [("broken_link".into(), "t-a".into(), 3)]);

    // One amount (the stated balances now contradict it too: same event).
    sqlx::query(
        "UPDATE events SET payload = jsonb_set(payload, '{MoneyDeposited,amount}', '251')
         WHERE aggregate_id = 't-b' AND sequence = 3",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let (_, report) = verify_json(&app, &[]).await;
    let found = findings(&report);
    assert!(
        found.contains(&("broken_link".into(), "t-b".into(), 3)),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .all(|f| f.2 == 3 && (f.1 == "t-a" || f.1 == "t-b")),
        "{found:?}"
    );

    // One whole row.
    sqlx::query("DELETE FROM events WHERE aggregate_id = 't-c' AND sequence = 2")
        .execute(&app.db)
        .await
        .unwrap();
    let (_, report) = verify_json(&app, &["--aggregate", "t-c"]).await;
    assert_eq!(
        findings(&report),
        [("sequence_gap".into(), "t-c".into(), 2)]
    );
    let human = app.tally(&["audit", "verify", "--aggregate", "t-c"]).await;
    assert_eq!(human.status.code(), Some(1));
    assert!(
        stdout(&human).contains("account t-c event 2: missing"),
        "{}",
        stdout(&human)
    );

    // The read model, not the events.
    sqlx::query("UPDATE accounts SET balance = balance + 1 WHERE account_id = 't-d'")
        .execute(&app.db)
        .await
        .unwrap();
    let (_, report) = verify_json(&app, &["--aggregate", "t-d"]).await;
    let mismatch = &report["findings"][0];
    assert_eq!(mismatch["kind"], "read_model_mismatch", "{report}");
    assert_eq!(mismatch["field"], "balance");
    assert_eq!(mismatch["derived"], "425");
    assert_eq!(mismatch["read_model"], "426");
}

#[tokio::test]
async fn rows_from_before_the_chain_are_hashed_at_start_and_the_chain_goes_on() {
    let mut app = TestApp::spawn().await;
    account_with_deposits(&app, "old-1", &[10, 20]).await;
    account_with_deposits(&app, "old-2", &[5]).await;
    app.stop_command_service().await;
    // As the release before the chain left them.
    sqlx::query("UPDATE events SET hash = NULL")
        .execute(&app.db)
        .await
        .unwrap();
    let (code, report) = verify_json(&app, &[]).await;
    assert_eq!(code, Some(1));
    assert_eq!(report["findings_total"], 5, "{report}");
    assert!(findings(&report).iter().all(|f| f.0 == "unchained"));

    app.start_command_service(&[]).await;
    let unhashed: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE hash IS NULL")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(unhashed, 0);
    let reply = app
        .send(
            "account.deposit",
            json!({"account_id": "old-1", "amount": 1}),
        )
        .await;
    assert_eq!(accepted(&reply).1, 4);
    wait_applied(&app, "old-1", &reply).await;
    let (code, report) = verify_json(&app, &[]).await;
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["events"], 6);
}
