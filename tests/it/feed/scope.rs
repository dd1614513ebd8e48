//! Feeds are scoped like reads: a token bound to one owner never follows, nor learns of,
//! another owner's accounts; hostile cursors are refused.

use platform::auth::Scope;
use tests::TestApp;
use tests::app::{admin_token, mint_token};
use tests::sse::SseReader;

use super::{WAIT, deposit, open, summary};

#[tokio::test]
async fn an_owner_bound_token_follows_its_own_accounts_only() {
    let app = TestApp::spawn().await;
    open(&app, "mine", "alice").await;
    open(&app, "theirs", "mallory-victim").await;
    deposit(&app, "theirs", 5_000).await;
    let alice = mint_token("alice-app", &[Scope::AccountsRead], Some("alice"));
    let base = &app.http_base;
    let status = |path: String, token: String| async move {
        SseReader::request(&format!("{base}{path}"), &token, None)
            .await
            .status()
            .as_u16()
    };
    // Another owner's account answers as a missing one; so does an account that never was.
    assert_eq!(
        status("/v1/accounts/theirs/feed".into(), alice.clone()).await,
        404
    );
    assert_eq!(
        status("/v1/accounts/never/feed".into(), alice.clone()).await,
        404
    );
    assert_eq!(
        status("/v1/feed?owner=mallory-victim".into(), alice.clone()).await,
        403
    );
    // Unbound tokens must say whose accounts; no token, no feed; a write-only token neither.
    assert_eq!(status("/v1/feed".into(), admin_token()).await, 400);
    assert_eq!(
        status("/v1/accounts/mine/feed".into(), "not-a-token".into()).await,
        401
    );
    let writer = mint_token("w", &[Scope::AccountsWrite], Some("alice"));
    assert_eq!(status("/v1/accounts/mine/feed".into(), writer).await, 403);

    // Its own owner feed (owner left out) carries its account and nothing of the other's.
    let mut feed = SseReader::open(&format!("{base}/v1/feed"), &alice, None).await;
    deposit(&app, "theirs", 1).await;
    deposit(&app, "mine", 3).await;
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|s: &(String, i64, i64, Option<i64>)| s.2 == 3)
    {
        seen.push(summary(&feed.changes(1, WAIT).await[0]));
    }
    assert!(seen.iter().all(|s| s.0 == "mine"), "{seen:?}");
}

#[tokio::test]
async fn hostile_cursors_are_refused_with_a_clear_error() {
    let app = TestApp::spawn().await;
    open(&app, "c1", "alice").await;
    open(&app, "c2", "bob").await;
    let admin = admin_token();
    let alice = mint_token("alice-app", &[Scope::AccountsRead], Some("alice"));
    let base = &app.http_base;
    for (path, cursor) in [
        ("/v1/accounts/c1/feed", "account:c2:1"),
        ("/v1/accounts/c1/feed", "transfer:c1:settled"),
        ("/v1/accounts/c1/feed", "account:c1:-1"),
        ("/v1/accounts/c1/feed", "owner:1:0=1"),
        ("/v1/feed?owner=alice", "account:c1:1"),
        ("/v1/feed?owner=alice", "owner:1:0=-5"),
        ("/v1/feed?owner=alice", "owner:x:0=1"),
    ] {
        let response = SseReader::request(&format!("{base}{path}"), &admin, Some(cursor)).await;
        assert_eq!(response.status(), 400, "{path} after {cursor}");
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "bad_request", "{problem}");
    }
    // A cursor does not widen what a bound token sees: bob's account stays absent.
    let response = SseReader::request(
        &format!("{base}/v1/accounts/c2/feed"),
        &alice,
        Some("account:c2:0"),
    )
    .await;
    assert_eq!(response.status(), 404);
    // A cursor from a rebuilt read model (another epoch) starts over with a reset, then state.
    let mut feed = SseReader::open(&format!("{base}/v1/feed"), &alice, Some("owner:1:0=0")).await;
    let reset = feed.next(WAIT).await.expect("an event");
    assert_eq!(reset.event, "reset");
    let state = feed.changes(1, WAIT).await;
    assert_eq!(summary(&state[0]).0, "c1");
}
