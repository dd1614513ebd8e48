//! Crash safety: `kill -9` the real command-service binary under load, restart it, and check
//! that every accepted command's events reach the stream exactly once, in per-aggregate order.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use domain::CommandReply;
use serde_json::json;
use tests::TestApp;
use tests::binaries::workspace_binary;
use tests::child::free_port;
use tokio::sync::Mutex;

const ACCOUNTS: usize = 20;
const KILL_AFTER_ACCEPTED: usize = 300;
const SENDERS: usize = 16;

fn start_binary(app: &TestApp) -> (Child, u16) {
    let port = free_port();
    let mut args = app.command_service_args(&[]);
    args.remove(0);
    args.retain(|a| !a.starts_with("--ops-addr"));
    let child = Command::new(workspace_binary("command-service"))
        .args(&args)
        .arg(format!("--ops-addr=127.0.0.1:{port}"))
        .env("TALLY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("command-service binary (cargo build --workspace)");
    (child, port)
}

async fn wait_ready(app: &TestApp, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = app
            .http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            && r.status() == 200
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "command-service never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn kill_9_after_accepted_replies_loses_and_duplicates_nothing() {
    let mut app = TestApp::spawn().await;
    for a in 0..ACCOUNTS {
        tests::client::accepted(
            &app.send(
                "account.open",
                json!({"account_id": format!("c{a}"), "owner": "o", "currency": "EUR"}),
            )
            .await,
        );
    }
    // From here on only the real binary executes commands.
    app.stop_command_service().await;
    let (mut child, port) = start_binary(&app);
    wait_ready(&app, port).await;

    let app = Arc::new(app);
    let accepted: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let (app, accepted, count, stop) = (
            Arc::clone(&app),
            Arc::clone(&accepted),
            Arc::clone(&count),
            stop.clone(),
        );
        senders.push(tokio::spawn(async move {
            let subject = format!("{}.cmd.account.deposit", app.subjects.prefix());
            let mut i = 0usize;
            while !stop.is_cancelled() {
                i += 1;
                let body =
                    json!({"account_id": format!("c{}", (s * 7 + i) % ACCOUNTS), "amount": 1});
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    "Authorization",
                    format!("Bearer {}", tests::app::admin_token()).as_str(),
                );
                let request = app.nats.request_with_headers(
                    subject.clone(),
                    headers,
                    serde_json::to_vec(&body).unwrap().into(),
                );
                let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(2), request).await
                else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue; // the service is down: no reply, nothing promised
                };
                if let Ok(CommandReply::Accepted {
                    aggregate_id,
                    version,
                    ..
                }) = serde_json::from_slice(&response.payload)
                {
                    accepted.lock().await.push((aggregate_id, version));
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::SeqCst) < KILL_AFTER_ACCEPTED {
        assert!(
            Instant::now() < deadline,
            "too slow to reach {KILL_AFTER_ACCEPTED} accepted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL: no drain, no flush, no destructors
    child.wait().unwrap();
    let accepted_at_kill = count.load(Ordering::SeqCst);
    stop.cancel();
    for sender in senders {
        sender.await.unwrap();
    }
    // Replies that raced the kill may have landed after it; all of them were accepted.
    let accepted = accepted.lock().await.clone();
    assert!(accepted.len() >= accepted_at_kill);

    let (mut restarted, port) = start_binary(&app);
    wait_ready(&app, port).await;
    let in_store = u64::try_from(app.events_in_store().await).unwrap();
    app.wait_for_stream_count(in_store, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    restarted.kill().ok();
    restarted.wait().ok();

    let stream = app.events_in_stream().await;
    let ids: Vec<&str> = stream.iter().map(|e| e.msg_id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an event is in the stream twice");
    assert_eq!(ids.len() as u64, in_store, "stream and store disagree");
    for (aggregate_id, version) in &accepted {
        let id = format!("account:{aggregate_id}:{version}");
        assert!(
            unique.contains(id.as_str()),
            "accepted {id} is missing from the stream"
        );
    }
    let mut last: HashMap<&str, u64> = HashMap::new();
    for event in &stream {
        let previous = last.insert(&event.message.aggregate_id, event.message.sequence);
        assert_eq!(
            previous.unwrap_or(0) + 1,
            event.message.sequence,
            "per-aggregate order"
        );
    }
}
