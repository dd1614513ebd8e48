//! Audits against real servers: `tally audit verify` on an untouched store and after tampering
//! with rows directly in PostgreSQL, digests, history and state over HTTP, exports.

use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::CommandReply;
use serde_json::{Value, json};
use tests::TestApp;
use tests::client::accepted;
use tests::tally_cli::stdout;

/// Opens `id` and deposits each amount; returns the last reply.
async fn account_with_deposits(app: &TestApp, id: &str, amounts: &[i64]) -> CommandReply {
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
async fn wait_applied(app: &TestApp, id: &str, reply: &CommandReply) {
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

async fn verify_json(app: &TestApp, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["--json", "audit", "verify"];
    args.extend_from_slice(extra);
    let output = app.tally(&args).await;
    let report: Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {output:?}"));
    (output.status.code(), report)
}

/// (kind, aggregate id, sequence) of every finding.
fn findings(report: &Value) -> Vec<(String, String, i64)> {
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
async fn a_digest_proves_history_unchanged_even_when_the_chain_is_rewritten() {
    let mut app = TestApp::spawn().await;
    account_with_deposits(&app, "dg-1", &[10, 20]).await;
    account_with_deposits(&app, "dg-2", &[5]).await;

    // Published by the command-service to the audit stream.
    app.stop_command_service().await;
    app.start_command_service(&["--audit-digest-interval-s=1"])
        .await;
    let mut stream = app.jetstream.get_stream(&app.streams.audit).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let sequence = loop {
        let info = stream.info().await.unwrap();
        if info.state.messages > 0 {
            break info.state.last_sequence;
        }
        assert!(std::time::Instant::now() < deadline, "no digest published");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let published: Value =
        serde_json::from_slice(&stream.get_raw_message(sequence).await.unwrap().payload).unwrap();
    assert_eq!(published["event_count"], 5, "{published}");
    assert_eq!(published["aggregate_count"], 2);
    let (code, report) = verify_json(&app, &["--digest", &sequence.to_string()]).await;
    assert_eq!(code, Some(0), "{report}");

    // Taken by hand and kept in a file, like an auditor would.
    let digest = app.tally(&["audit", "digest"]).await;
    assert_eq!(digest.status.code(), Some(0));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("digest.json");
    std::fs::write(&file, &digest.stdout).unwrap();
    let file = file.to_str().unwrap();
    let (code, _) = verify_json(&app, &["--digest", file]).await;
    assert_eq!(code, Some(0));

    // Events after the digest do not disturb it.
    account_with_deposits(&app, "dg-3", &[1]).await;
    let (code, _) = verify_json(&app, &["--digest", file]).await;
    assert_eq!(code, Some(0));

    // A tamperer who rewrites an event and recomputes its hash leaves a consistent chain…
    let row: (Value, Value, Vec<u8>) = sqlx::query_as(
        "SELECT payload, metadata, (SELECT hash FROM events WHERE aggregate_id = 'dg-1' AND sequence = 2)
         FROM events WHERE aggregate_id = 'dg-1' AND sequence = 3",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    let mut payload = row.0;
    payload["MoneyDeposited"]["reference"] = json!("forged");
    let prev: [u8; 32] = row.2.as_slice().try_into().unwrap();
    let forged = domain::hash_chain::event_hash(
        &prev,
        &domain::hash_chain::ChainedEvent {
            aggregate_type: "account",
            aggregate_id: "dg-1",
            sequence: 3,
            event_type: "MoneyDeposited",
            event_version: domain::account::MONEY_DEPOSITED_VERSION,
            payload: &payload,
            metadata: &row.1,
        },
    );
    sqlx::query(
        "UPDATE events SET payload = $1, hash = $2 WHERE aggregate_id = 'dg-1' AND sequence = 3",
    )
    .bind(&payload)
    .bind(forged.to_vec())
    .execute(&app.db)
    .await
    .unwrap();
    let (code, report) = verify_json(&app, &[]).await;
    assert_eq!(code, Some(0), "the chain alone cannot tell: {report}");
    // …which the digests expose.
    for digest in [file.to_owned(), sequence.to_string()] {
        let (code, report) = verify_json(&app, &["--digest", &digest]).await;
        assert_eq!(code, Some(1), "{report}");
        assert_eq!(report["findings"][0]["kind"], "digest_mismatch", "{report}");
        assert_eq!(report["findings"][0]["field"], "merkle_root");
    }
}

#[tokio::test]
async fn history_with_who_and_why_and_state_at_any_point() {
    let app = TestApp::spawn().await;
    account_with_deposits(&app, "h-1", &[100, 50]).await;
    let withdrawn = app
        .send(
            "account.withdraw",
            json!({"account_id": "h-1", "amount": 30}),
        )
        .await;
    let (_, version) = accepted(&withdrawn);
    assert_eq!(version, 4);

    let page: Value = app
        .http_get("/v1/audit/account/h-1/events?limit=3")
        .await
        .json()
        .await
        .unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    for (i, event) in items.iter().enumerate() {
        assert_eq!(event["sequence"], i as i64 + 1);
        assert_eq!(event["actor"], "anonymous");
        assert_eq!(event["hash"].as_str().unwrap().len(), 64);
        assert!(event["command_id"].as_str().unwrap().len() == 36, "{event}");
        assert_eq!(event["command_id"], event["correlation_id"]);
    }
    assert_eq!(items[1]["event_type"], "MoneyDeposited");
    assert_eq!(items[1]["event_version"], "2.0");
    let next = page["next_cursor"].as_str().unwrap();
    let rest: Value = app
        .http_get(&format!(
            "/v1/audit/account/h-1/events?limit=3&cursor={next}"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["items"][0]["sequence"], 4);
    assert!(rest["next_cursor"].is_null());
    assert_eq!(
        app.http_get("/v1/audit/account/nobody/events")
            .await
            .status(),
        404
    );

    let at = |i: usize| -> DateTime<Utc> {
        items
            .get(i)
            .map(|e| e["recorded_at"].as_str().unwrap().parse().unwrap())
            .unwrap()
    };
    let (first, second, third) = (at(0), at(1), at(2));
    assert!(first < second && second < third);
    let between = second + (third - second) / 2;
    let state: Value = app
        .http_get(&format!(
            "/v1/audit/account/h-1/state?at={}",
            between.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(state["version"], 2, "{state}");
    assert_eq!(state["state"]["balance"], 100);
    assert_eq!(state["state"]["status"], "open");

    let before =
        (first - chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    assert_eq!(
        app.http_get(&format!("/v1/audit/account/h-1/state?at={before}"))
            .await
            .status(),
        404
    );
    let latest: Value = app
        .http_get("/v1/audit/account/h-1/state?version=4")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(latest["state"]["balance"], 120);
    assert_eq!(
        app.http_get("/v1/audit/account/h-1/state?version=5")
            .await
            .status(),
        404
    );
    assert_eq!(
        app.http_get("/v1/audit/account/h-1/state").await.status(),
        400
    );
    assert_eq!(
        app.http_get("/v1/audit/account/h-1/state?version=1&at=2020-01-01T00:00:00Z")
            .await
            .status(),
        400
    );

    // Exports: the whole history, streamed.
    let ndjson = app
        .http
        .get(format!("{}/v1/audit/account/h-1/events", app.http_base))
        .header("Accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(ndjson.headers()["content-type"], "application/x-ndjson");
    let text = ndjson.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[3]["event_type"], "MoneyWithdrawn");
    let csv = app
        .http
        .get(format!("{}/v1/audit/account/h-1/events", app.http_base))
        .header("Accept", "text/csv")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 5, "{csv}");
    assert!(rows[0].starts_with("aggregate_type,aggregate_id,sequence,event_type"));
    assert!(
        rows[4].starts_with("account,h-1,4,MoneyWithdrawn,1.0,"),
        "{}",
        rows[4]
    );

    let exported = app
        .tally(&["audit", "export", "h-1", "--format", "ndjson"])
        .await;
    assert_eq!(exported.status.code(), Some(0), "{exported:?}");
    assert_eq!(stdout(&exported), text);
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
