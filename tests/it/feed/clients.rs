//! The feed from the CLI (`tally account watch`), and a feed across a server's shutdown.

use std::time::Duration;

use tests::TestApp;
use tests::app::admin_token;
use tests::sse::SseReader;

use super::{WAIT, deposit, open};

#[tokio::test]
async fn tally_account_watch_prints_each_change_and_resumes_after_a_token() {
    let app = TestApp::spawn().await;
    open(&app, "w1", "alice").await;
    let token = deposit(&app, "w1", 10).await;
    // Runs while the deposits below happen; stops by itself after three changes.
    let watching = async {
        tokio::time::timeout(
            Duration::from_secs(60),
            app.tally(&[
                "--json", "account", "watch", "--id", "w1", "--after", &token, "--count", "3",
            ]),
        )
        .await
        .expect("watch ends after 3 changes")
    };
    let depositing = async {
        // The CLI connects within this pause or replays the deposits: either way, once each.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for amount in [1, 2, 3] {
            deposit(&app, "w1", amount).await;
        }
    };
    let (output, ()) = tokio::join!(watching, depositing);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let changes: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON change per line"))
        .collect();
    let seen: Vec<_> = changes
        .iter()
        .map(|c| (c["version"].as_i64(), c["balance"].as_i64()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (Some(3), Some(11)),
            (Some(4), Some(13)),
            (Some(5), Some(16))
        ]
    );
}

#[tokio::test]
async fn a_server_shutting_down_ends_its_feeds_with_a_last_event_and_stops() {
    let app = TestApp::spawn().await;
    open(&app, "sd", "alice").await;
    let mut query = app.start_binary("query-service", &[]);
    query.wait_ready(WAIT).await;
    let url = format!("{}/v1/accounts/sd/feed", query.base_url());
    let mut feed = SseReader::open(&url, &admin_token(), None).await;
    assert_eq!(feed.changes(1, WAIT).await[0].event, "change");
    // SIGTERM, as an orchestrator stops it: graceful shutdown must not wait on open feeds.
    query.terminate();
    let end = feed.next(WAIT).await.expect("a last event");
    assert_eq!(end.event, "end");
    assert_eq!(end.json()["reason"], "shutdown");
    assert!(
        feed.next(WAIT).await.is_none(),
        "the stream goes on after its end"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = query.exit_status() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "query-service still running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "stopped with {status}");
}
