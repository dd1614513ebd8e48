//! The audit HTTP endpoints: history with who/why and hashes, state at any point, exports, and a
//! third party re-verifying an export.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tests::TestApp;
use tests::client::accepted;
use tests::tally_cli::stdout;

use super::account_with_deposits;

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
        assert_eq!(event["actor"], "test-admin", "the token subject");
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
