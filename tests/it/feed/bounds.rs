//! Feeds are bounded: a slow reader is dropped with a last event saying why, feeds per token
//! and per instance are limited, a quiet feed sends heartbeats and every feed ends at its
//! maximum age; one instance carries 1,000 feeds at once.

use std::time::Duration;

use platform::auth::Scope;
use serde_json::json;
use tests::TestApp;
use tests::app::{admin_token, mint_token};
use tests::sse::SseReader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{WAIT, deposit, open};
use crate::ledger::{item, submit};

/// A metric of the query-service at `base`, summed over its label sets.
async fn metric(base: &str, name: &str, label: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_dropped_with_a_last_event_saying_why() {
    let app = TestApp::spawn().await;
    open(&app, "slow", "alice").await;
    let qs = app.start_binary(
        "query-service",
        &["--feed-buffer-events=4", "--feed-slow-reader-ms=300"],
    );
    let mut qs = qs;
    qs.wait_ready(WAIT).await;
    let base = qs.base_url();
    // A client with a tiny receive window that reads nothing: the server's socket fills, then
    // the feed's buffer, then the feed ends.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2_048).unwrap();
    let mut stream = socket
        .connect(format!("127.0.0.1:{}", qs.port).parse().unwrap())
        .await
        .unwrap();
    let request = format!(
        "GET /v1/accounts/slow/feed HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\nauthorization: Bearer {}\r\n\r\n",
        admin_token()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut deposits = 0;
    while metric(&base, "tally_feeds_ended_total", "slow_reader").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline && deposits < 20_000,
            "not dropped after {deposits} deposits"
        );
        let items: Vec<_> = (0..500)
            .map(|_| {
                item(
                    "account.deposit",
                    json!({"account_id": "slow", "amount": 1}),
                )
            })
            .collect();
        submit(&app, false, &items, None).await;
        deposits += 500;
    }
    assert_eq!(
        metric(&base, "tally_feeds_open", "").await,
        0.0,
        "its place is kept"
    );
    // Reading now: what was buffered, then the last event, then the end of the (chunked) body.
    let mut body = Vec::new();
    let mut buffer = vec![0u8; 65_536];
    let read_all = async {
        while !body.ends_with(b"\r\n0\r\n\r\n") {
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "connection closed before the body ended");
            body.extend_from_slice(&buffer[..n]);
        }
    };
    tokio::time::timeout(WAIT, read_all)
        .await
        .expect("the dropped feed's body ends");
    let body = String::from_utf8_lossy(&body);
    let last = &body[body.rfind("event: ").expect("events")..];
    assert!(last.starts_with("event: end"), "last event: {last}");
    assert!(
        last.contains("\"reason\":\"slow_reader\""),
        "last event: {last}"
    );
}

#[tokio::test]
async fn feeds_are_limited_per_token_and_per_instance_and_places_come_back() {
    let app = TestApp::spawn().await;
    open(&app, "lim", "alice").await;
    let mut qs = app.start_binary(
        "query-service",
        &["--feeds-per-token-max=2", "--feeds-max=3"],
    );
    qs.wait_ready(WAIT).await;
    let url = format!("{}/v1/accounts/lim/feed", qs.base_url());
    let token = |subject: &str| mint_token(subject, &[Scope::AccountsRead], None);
    let a1 = SseReader::open(&url, &token("a"), None).await;
    let _a2 = SseReader::open(&url, &token("a"), None).await;
    let third = SseReader::request(&url, &token("a"), None).await;
    assert_eq!(third.status(), 429, "a third feed for one token");
    let _b = SseReader::open(&url, &token("b"), None).await;
    let fourth = SseReader::request(&url, &token("c"), None).await;
    assert_eq!(fourth.status(), 503, "a fourth feed on the instance");
    let problem: serde_json::Value = fourth.json().await.unwrap();
    assert_eq!(problem["code"], "unavailable");
    drop(a1);
    // The closed feed's place comes back once its task sees the client gone.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let response = SseReader::request(&url, &token("a"), None).await;
        if response.status() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "place never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_quiet_feed_sends_heartbeats_and_ends_at_its_maximum_age() {
    let app = TestApp::spawn().await;
    open(&app, "quiet", "alice").await;
    let mut qs = app.start_binary(
        "query-service",
        &["--feed-heartbeat-ms=100", "--feed-max-age-ms=1500"],
    );
    qs.wait_ready(WAIT).await;
    let url = format!("{}/v1/accounts/quiet/feed", qs.base_url());
    let mut feed = SseReader::open(&url, &admin_token(), None).await;
    let mut events = Vec::new();
    while let Some(event) = feed.next(WAIT).await {
        events.push(event);
    }
    let last = events.last().expect("events");
    assert_eq!(last.event, "end");
    assert_eq!(last.json()["reason"], "max_age");
    assert!(
        feed.comments >= 3,
        "{} heartbeats in 1.5 s at 100 ms",
        feed.comments
    );
}

#[tokio::test]
async fn one_instance_carries_a_thousand_feeds_each_told_of_its_change() {
    let app = TestApp::spawn().await;
    const FEEDS: usize = 1_000;
    let opens: Vec<_> = (0..FEEDS)
        .map(|i| {
            item(
                "account.open",
                json!({"account_id": format!("k{i}"), "owner": format!("o{}", i % 50), "currency": "EUR"}),
            )
        })
        .collect();
    submit(&app, false, &opens, None).await;
    let last = deposit(&app, &format!("k{}", FEEDS - 1), 1).await;
    assert_eq!(
        app.http_get_with_token(&format!("/v1/accounts/k{}", FEEDS - 1), &last)
            .await
            .status(),
        200
    );
    let mut feeds = Vec::new();
    for i in 0..FEEDS {
        // 16 feeds per token at most: one token per feed, as separate clients would have.
        let token = mint_token(&format!("reader-{i}"), &[Scope::AccountsRead], None);
        let url = format!("{}/v1/accounts/k{i}/feed", app.http_base);
        feeds.push(SseReader::open(&url, &token, None).await);
    }
    assert_eq!(
        metric(&app.http_base, "tally_feeds_open", "").await,
        FEEDS as f64
    );
    let deposits: Vec<_> = (0..FEEDS)
        .map(|i| {
            item(
                "account.deposit",
                json!({"account_id": format!("k{i}"), "amount": 5}),
            )
        })
        .collect();
    submit(&app, false, &deposits, None).await;
    let told =
        futures::future::join_all(feeds.iter_mut().enumerate().map(|(i, feed)| async move {
            loop {
                let change = feed
                    .changes(1, Duration::from_secs(30))
                    .await
                    .remove(0)
                    .json();
                if change["entry"]["amount"] == 5 {
                    return (i, change["balance"].as_i64());
                }
            }
        }))
        .await;
    for (i, balance) in told {
        let expected = if i == FEEDS - 1 { 6 } else { 5 };
        assert_eq!(balance, Some(expected), "feed {i}");
    }
}
