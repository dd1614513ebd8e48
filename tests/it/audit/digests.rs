//! Digests: published by the command-service and taken by hand, and what they catch that the
//! chain alone cannot.

use std::time::Duration;

use serde_json::{Value, json};
use tests::TestApp;

use super::{account_with_deposits, verify_json};

/// Waits for the command-service's first digest in the audit stream: (sequence, digest).
async fn first_published_digest(app: &TestApp) -> (u64, Value) {
    let mut stream = app.jetstream.get_stream(&app.streams.audit).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let info = stream.info().await.unwrap();
        if info.state.messages > 0 {
            let sequence = info.state.last_sequence;
            let message = stream.get_raw_message(sequence).await.unwrap();
            return (sequence, serde_json::from_slice(&message.payload).unwrap());
        }
        assert!(std::time::Instant::now() < deadline, "no digest published");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    let (sequence, published) = first_published_digest(&app).await;
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
async fn signed_digests_prove_who_took_them() {
    let mut app = TestApp::spawn().await;
    account_with_deposits(&app, "sg-1", &[10]).await;
    let keys: Value =
        serde_json::from_slice(&app.tally(&["audit", "keygen"]).await.stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("digest.key");
    std::fs::write(&key_file, keys["secret_key"].as_str().unwrap()).unwrap();
    let key_file = key_file.to_str().unwrap().to_owned();
    let public = keys["public_key"].as_str().unwrap();

    app.stop_command_service().await;
    app.start_command_service(&[
        "--audit-digest-interval-s=1",
        &format!("--audit-signing-key-file={key_file}"),
    ])
    .await;
    let (sequence, _) = first_published_digest(&app).await;
    let sequence = sequence.to_string();
    let (code, report) = verify_json(&app, &["--digest", &sequence, "--public-key", public]).await;
    assert_eq!(code, Some(0), "{report}");
    let others: Value =
        serde_json::from_slice(&app.tally(&["audit", "keygen"]).await.stdout).unwrap();
    let other = others["public_key"].as_str().unwrap();
    let (code, report) = verify_json(&app, &["--digest", &sequence, "--public-key", other]).await;
    assert_eq!(code, Some(1));
    assert_eq!(
        report["findings"][0]["kind"], "digest_signature",
        "{report}"
    );

    // A signed digest file whose numbers were edited no longer verifies.
    let taken = app
        .tally(&["audit", "digest", "--signing-key-file", &key_file])
        .await;
    let mut digest: Value = serde_json::from_slice(&taken.stdout).unwrap();
    assert_eq!(digest["signature"]["public_key"], public);
    let file = dir.path().join("digest.json");
    std::fs::write(&file, serde_json::to_vec(&digest).unwrap()).unwrap();
    let file = file.to_str().unwrap();
    let (code, report) = verify_json(&app, &["--digest", file, "--public-key", public]).await;
    assert_eq!(code, Some(0), "{report}");
    digest["event_count"] = json!(1);
    std::fs::write(file, serde_json::to_vec(&digest).unwrap()).unwrap();
    let (code, report) = verify_json(&app, &["--digest", file]).await;
    assert_eq!(code, Some(1));
    let kinds: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"digest_signature"), "{report}");
}

/// The command-service's digests after the first read only the events since the last one;
/// each must equal a digest taken from scratch at the same point.
#[tokio::test]
async fn a_digest_taken_from_the_last_one_equals_one_taken_from_scratch() {
    let app = TestApp::spawn().await;
    let content = |d: &audit::digest::Digest| {
        (
            d.position,
            d.event_count,
            d.aggregate_count,
            d.merkle_root.clone(),
        )
    };
    let comparable = |d: &audit::digest::Digest| (d.as_of_tx, content(d));
    let mut tracker = audit::digest::DigestTracker::default();
    account_with_deposits(&app, "dgi-1", &[10, 20]).await;
    let first = tracker.take(&app.db).await.unwrap();
    let scratch = audit::digest::take(&app.db).await.unwrap();
    if first.as_of_tx == scratch.as_of_tx {
        assert_eq!(comparable(&first), comparable(&scratch));
    }
    // New events of a known aggregate (its head moves) and of a new one.
    let reply = app
        .send(
            "account.withdraw",
            json!({"account_id": "dgi-1", "amount": 5}),
        )
        .await;
    assert!(
        matches!(reply, domain::CommandReply::Accepted { .. }),
        "{reply:?}"
    );
    account_with_deposits(&app, "dgi-2", &[7]).await;
    // A digest covers transactions below the oldest one still running (a projection's, say),
    // so the last events may need a moment to be covered; every digest on the way must agree.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let next = loop {
        let next = tracker.take(&app.db).await.unwrap();
        let scratch = audit::digest::take(&app.db).await.unwrap();
        if next.as_of_tx == scratch.as_of_tx {
            assert_eq!(comparable(&next), comparable(&scratch));
        }
        if next.event_count == 6 {
            break next;
        }
        assert!(std::time::Instant::now() < deadline, "{next:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Later digests may name a later `as_of_tx` with nothing new in between.
    let scratch = audit::digest::take(&app.db).await.unwrap();
    assert_eq!(content(&next), content(&scratch));
    assert_eq!(next.aggregate_count, 2);
    assert_ne!(next.merkle_root, first.merkle_root);
    // Nothing new: the same digest again.
    let again = tracker.take(&app.db).await.unwrap();
    assert_eq!(
        (again.event_count, again.merkle_root.clone()),
        (next.event_count, next.merkle_root.clone())
    );
}
