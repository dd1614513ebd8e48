//! Live changes, and resuming after a disconnect: no gap, no duplicate, on either instance.

use tests::TestApp;
use tests::app::admin_token;
use tests::sse::SseReader;

use super::{WAIT, deposit, open, summary};

#[tokio::test]
async fn an_account_feed_is_live_and_resumes_on_another_instance_without_gap_or_duplicate() {
    let app = TestApp::spawn().await;
    open(&app, "f1", "alice").await;
    deposit(&app, "f1", 10).await;
    let token = deposit(&app, "f1", 20).await;
    let admin = admin_token();
    let url = |base: &str| format!("{base}/v1/accounts/f1/feed");

    // Fresh: the current state first (once the read model has the deposits).
    let mut feed = SseReader::open(&url(&app.http_base), &admin, None).await;
    let mut first = feed.changes(1, WAIT).await.remove(0);
    while first.id.as_deref() != Some(token.as_str()) {
        // Opened before the projection caught up: the deposits follow as changes.
        first = feed.changes(1, WAIT).await.remove(0);
    }
    let state = first.json();
    assert_eq!(state["balance"], 30);
    assert_eq!(state["account"]["available"], 30, "{state}");

    // Live: each deposit once, in order, with its entry.
    deposit(&app, "f1", 1).await;
    deposit(&app, "f1", 2).await;
    let live = feed.changes(2, WAIT).await;
    let seen: Vec<_> = live.iter().map(summary).collect();
    assert_eq!(
        seen,
        vec![
            ("f1".to_owned(), 4, 31, Some(1)),
            ("f1".to_owned(), 5, 33, Some(2))
        ]
    );
    assert_eq!(live[1].id.as_deref(), Some("account:f1:5"));
    assert_eq!(
        live[1].json()["account"]["version"],
        5,
        "the last change carries the state"
    );
    drop(feed);

    // Missed while away, then live again, on a second instance.
    for amount in [100, 200, 300] {
        deposit(&app, "f1", amount).await;
    }
    let mut other = app.start_binary("query-service", &[]);
    other.wait_ready(WAIT).await;
    let mut resumed = SseReader::open(&url(&other.base_url()), &admin, Some("account:f1:5")).await;
    let missed: Vec<_> = resumed.changes(3, WAIT).await.iter().map(summary).collect();
    assert_eq!(
        missed,
        vec![
            ("f1".to_owned(), 6, 133, Some(100)),
            ("f1".to_owned(), 7, 333, Some(200)),
            ("f1".to_owned(), 8, 633, Some(300)),
        ]
    );
    deposit(&app, "f1", 5).await;
    let next = resumed.changes(1, WAIT).await;
    assert_eq!(summary(&next[0]), ("f1".to_owned(), 9, 638, Some(5)));
    // `?after=` is the same cursor (a command reply's token works too).
    let mut after = SseReader::open(
        &format!("{}?after=account:f1:8", url(&app.http_base)),
        &admin,
        None,
    )
    .await;
    assert_eq!(summary(&after.changes(1, WAIT).await[0]).1, 9);
}

#[tokio::test]
async fn an_owner_feed_follows_every_account_of_one_owner_and_resumes_exactly() {
    let app = TestApp::spawn().await;
    for (id, owner) in [("o1", "bob"), ("o2", "bob"), ("x1", "carol")] {
        open(&app, id, owner).await;
    }
    deposit(&app, "o1", 7).await;
    // Settled: the snapshot below then holds exactly the two accounts as they are.
    let token = deposit(&app, "o2", 8).await;
    let settled = app.http_get_with_token("/v1/accounts/o2", &token).await;
    assert_eq!(settled.status(), 200);
    let admin = admin_token();
    let url = format!("{}/v1/feed?owner=bob", app.http_base);
    let mut feed = SseReader::open(&url, &admin, None).await;
    let snapshot = feed.changes(2, WAIT).await;
    let mut balances: Vec<_> = snapshot.iter().map(summary).map(|s| (s.0, s.2)).collect();
    balances.sort();
    assert_eq!(balances, vec![("o1".to_owned(), 7), ("o2".to_owned(), 8)]);
    assert!(
        snapshot[0].id.is_none(),
        "a snapshot event before the last carries a cursor"
    );
    assert!(
        snapshot[1]
            .id
            .as_deref()
            .is_some_and(|id| id.starts_with("owner:"))
    );

    // Live, and never another owner's account.
    deposit(&app, "x1", 1_000).await;
    deposit(&app, "o1", 1).await;
    deposit(&app, "o2", 2).await;
    let live: Vec<_> = feed.changes(2, WAIT).await;
    let mut seen: Vec<_> = live.iter().map(summary).collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("o1".to_owned(), 3, 8, Some(1)),
            ("o2".to_owned(), 3, 10, Some(2))
        ]
    );
    let cursor = live[1]
        .id
        .clone()
        .expect("a live change carries its cursor");
    drop(feed);

    // Away: changes on both accounts, a new account of bob's, another owner's noise.
    for round in 0..5 {
        deposit(&app, "o1", 10 + round).await;
        deposit(&app, "o2", 20 + round).await;
        deposit(&app, "x1", 1).await;
    }
    open(&app, "o3", "bob").await;
    let token = deposit(&app, "o3", 3).await;
    assert_eq!(
        app.http_get_with_token("/v1/accounts/o3", &token)
            .await
            .status(),
        200
    );
    let mut resumed = SseReader::open(&url, &admin, Some(&cursor)).await;
    let mut missed: Vec<_> = resumed
        .changes(11, WAIT)
        .await
        .iter()
        .map(summary)
        .collect();
    missed.sort();
    let mut expected = Vec::new();
    for round in 0..5i64 {
        expected.push((
            "o1".to_owned(),
            4 + round,
            8 + (0..=round).map(|r| 10 + r).sum::<i64>(),
            Some(10 + round),
        ));
        expected.push((
            "o2".to_owned(),
            4 + round,
            10 + (0..=round).map(|r| 20 + r).sum::<i64>(),
            Some(20 + round),
        ));
    }
    // Its opening moved no money and was overtaken in the row by the deposit: one change.
    expected.push(("o3".to_owned(), 2, 3, Some(3)));
    expected.sort();
    assert_eq!(missed, expected, "gap or duplicate at the seam");
    // And live after the seam, once.
    deposit(&app, "o3", 4).await;
    let next = resumed.changes(1, WAIT).await;
    assert_eq!(summary(&next[0]), ("o3".to_owned(), 3, 7, Some(4)));
}

#[tokio::test]
async fn an_owner_feed_open_across_a_rebuild_starts_over_with_a_reset() {
    let app = TestApp::spawn().await;
    open(&app, "r1", "dave").await;
    let token = deposit(&app, "r1", 5).await;
    assert_eq!(
        app.http_get_with_token("/v1/accounts/r1", &token)
            .await
            .status(),
        200
    );
    let url = format!("{}/v1/feed?owner=dave", app.http_base);
    let mut feed = SseReader::open(&url, &admin_token(), None).await;
    assert_eq!(summary(&feed.changes(1, WAIT).await[0]).2, 5);
    // The rebuilt rows carry no feed positions: the feed cannot resume by position across it.
    let rebuilt = app.tally(&["projections", "rebuild", "accounts"]).await;
    assert!(rebuilt.status.success(), "{rebuilt:?}");
    deposit(&app, "r1", 6).await;
    let reset = feed.next(WAIT).await.expect("an event");
    assert_eq!(reset.event, "reset", "{reset:?}");
    let mut balance = 0;
    while balance != 11 {
        balance = summary(&feed.changes(1, WAIT).await[0]).2;
    }
}
