//! `/v1/ops/digest`: the latest audit digest and its signature check, on an open NATS server
//! and under `deploy/nats-server.conf`'s permissions.

use std::time::{Duration, Instant};

use platform::auth::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::TestApp;
use tests::app::mint_token;

use super::{account, eventually, get};

#[tokio::test]
async fn the_latest_digest_is_shown_with_its_signature_checked() {
    let mut app = TestApp::spawn().await;
    account(&app, "ops-1", &[5]).await;
    let (secret, public) = audit::digest_signing::generate_key();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("digest.key");
    std::fs::write(&key_file, secret).unwrap();
    app.stop_command_service().await;
    app.start_command_service(&[
        "--audit-digest-interval-s=1",
        &format!("--audit-signing-key-file={}", key_file.display()),
    ])
    .await;
    let auditor = mint_token("auditor", &[Scope::AuditRead], None);
    let mut body = Value::Null;
    eventually("a digest is served", async || {
        let (status, answer) = get(&app, "/v1/ops/digest", &auditor).await;
        assert!(
            status == StatusCode::OK || status == StatusCode::NOT_FOUND,
            "{status}: {answer}"
        );
        body = answer;
        status == StatusCode::OK
    })
    .await;
    assert_eq!(body["stream"], app.streams.audit.as_str(), "{body}");
    assert_eq!(body["digest"]["event_count"], 2, "{body}");
    assert_eq!(body["signature_check"]["ok"], true, "{body}");
    assert_eq!(body["signature_check"]["signed"], true);
    assert_eq!(body["signature_check"]["signed_by"], public.as_str());
    // The same message as in the stream, by its sequence.
    let stream = app.jetstream.get_stream(&app.streams.audit).await.unwrap();
    let sequence = body["sequence"].as_u64().unwrap();
    let stored: Value =
        serde_json::from_slice(&stream.get_raw_message(sequence).await.unwrap().payload).unwrap();
    assert_eq!(stored["merkle_root"], body["digest"]["merkle_root"]);
}

/// Under `deploy/nats-server.conf`'s users and permissions, the query-service reads the lag
/// and the latest digest (its user may read the audit stream's messages).
#[tokio::test]
async fn ops_reads_nats_under_the_deployed_permissions() {
    let mut secured = crate::security::Secured::start().await;
    let app = &mut secured.app;
    account(app, "ops-1", &[5]).await;
    app.stop_command_service().await;
    app.start_command_service(&["--audit-digest-interval-s=1"])
        .await;
    let auditor = mint_token("auditor", &[Scope::AuditRead], None);
    let (status, status_body) = get(app, "/v1/ops/projections", &auditor).await;
    assert_eq!(status, 200, "{status_body}");
    assert!(status_body["lag_unavailable"].is_null(), "{status_body}");
    // Unsigned (no key), and no key configured to require one: the check passes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = loop {
        let (status, body) = get(app, "/v1/ops/digest", &auditor).await;
        let last = json!({"status": status.as_u16(), "body": body});
        if status == StatusCode::OK {
            break last;
        }
        assert!(Instant::now() < deadline, "no digest served: {last}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(last["body"]["signature_check"]["ok"], true, "{last}");
    assert_eq!(last["body"]["signature_check"]["signed"], false, "{last}");
}
