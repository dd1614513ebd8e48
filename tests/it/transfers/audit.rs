//! `tally audit verify` checks transfers across their accounts.

use serde_json::json;
use tests::TestApp;
use tests::tally_cli::stdout;
use uuid::Uuid;

use super::{open, request, settled};

#[tokio::test]
async fn verify_finds_a_credit_moved_to_another_transfer() {
    let app = TestApp::spawn().await;
    open(&app, "va", "EUR", 100).await;
    open(&app, "vb", "EUR", 0).await;
    let id = Uuid::now_v7();
    settled(&app, &request(&app, id, "va", "vb", 40).await).await;
    let clean = app.tally(&["audit", "verify"]).await;
    assert_eq!(clean.status.code(), Some(0), "{}", stdout(&clean));

    // The credit now claims another transfer: vb's balance still adds up on its own, but the
    // money no longer arrives where the transfer says.
    let other = Uuid::now_v7();
    sqlx::query(
        "UPDATE events SET payload = jsonb_set(payload, '{TransferCredited,transfer_id}', $1)
         WHERE aggregate_id = 'vb' AND event_type = 'TransferCredited'",
    )
    .bind(json!(other.to_string()))
    .execute(&app.db)
    .await
    .unwrap();
    let found = app.tally(&["audit", "verify"]).await;
    assert_eq!(found.status.code(), Some(1), "{}", stdout(&found));
    let out = stdout(&found);
    assert!(
        out.contains(&format!("transfer {id}: completed without a credit")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "transfer {other}: account movements for a transfer that was never requested"
        )),
        "{out}"
    );
    assert!(out.contains("broken hash link"), "{out}");
}

#[tokio::test]
async fn the_transfers_projection_rebuilds_to_the_same_rows() {
    let app = TestApp::spawn().await;
    open(&app, "ra", "EUR", 100).await;
    open(&app, "rb", "EUR", 0).await;
    for amount in [30, 80, 20] {
        settled(
            &app,
            &request(&app, Uuid::now_v7(), "ra", "rb", amount).await,
        )
        .await;
    }
    let rows = || async {
        let rows: Vec<(Uuid, String, i64, Option<String>)> = sqlx::query_as(
            "SELECT transfer_id, status, version, failure_code FROM transfers ORDER BY transfer_id",
        )
        .fetch_all(&app.db)
        .await
        .unwrap();
        rows
    };
    let indexes = || async {
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT indexname || ': ' || indexdef FROM pg_indexes
             WHERE schemaname = current_schema() AND tablename = 'transfers' ORDER BY 1",
        )
        .fetch_all(&app.db)
        .await
        .unwrap();
        indexes
    };
    let indexes_before = indexes().await;
    assert!(
        indexes_before
            .iter()
            .any(|i| i.starts_with("transfers_by_from:")),
        "{indexes_before:?}"
    );
    let before = rows().await;
    assert_eq!(before.len(), 3);
    assert_eq!(
        before.iter().filter(|r| r.1 == "failed").count(),
        1,
        "the 80 could not be paid after the 30: {before:?}"
    );
    let rebuilt = app.tally(&["projections", "rebuild", "transfers"]).await;
    assert_eq!(rebuilt.status.code(), Some(0), "{rebuilt:?}");
    assert_eq!(rows().await, before);
    assert_eq!(indexes().await, indexes_before);
}

#[tokio::test]
async fn a_transfer_state_at_each_version_is_folded_from_its_events() {
    let app = super::spawn_steps().await;
    open(&app, "sa", "EUR", 100).await;
    open(&app, "sb", "EUR", 0).await;
    let id = Uuid::now_v7();
    settled(&app, &request(&app, id, "sa", "sb", 60).await).await;
    let state = |version: i64| {
        let app = &app;
        async move {
            let response = app
                .http_get(&format!("/v1/audit/transfer/{id}/state?version={version}"))
                .await;
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            (status.as_u16(), body)
        }
    };
    let (code, first) = state(1).await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["state"]["status"], "requested");
    assert_eq!(first["state"]["amount"], 60);
    assert_eq!(first["state"]["from"], "sa");
    let (_, last) = state(4).await;
    assert_eq!(last["state"]["status"], "completed", "{last}");
    assert_eq!(state(5).await.0, 404, "no fifth event");
}
