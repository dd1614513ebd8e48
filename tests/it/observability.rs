//! `/metrics` on every service: counters that count, latency histograms, the pool, the outbox
//! and projection lag that returns to zero.

use std::time::{Duration, Instant};

use domain::CommandReply;
use serde_json::json;
use tests::TestApp;
use tests::client::{accepted, rejected_code};

async fn metrics(app: &TestApp, base: &str) -> String {
    let response = app
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The value of the sample whose name-and-labels line starts with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn after_k_commands_the_counters_say_k() {
    let app = TestApp::spawn().await;
    let ops = format!("http://{}", app.command_ops_addr);
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "m-1", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    const K: usize = 7;
    let mut last_token = String::new();
    for _ in 0..K {
        let reply = app
            .send("account.deposit", json!({"account_id": "m-1", "amount": 3}))
            .await;
        accepted(&reply);
        if let CommandReply::Accepted {
            consistency_token, ..
        } = reply
        {
            last_token = consistency_token;
        }
    }
    let refused = app
        .send(
            "account.withdraw",
            json!({"account_id": "m-1", "amount": 1000}),
        )
        .await;
    assert_eq!(
        rejected_code(&refused),
        domain::ErrorCode::InsufficientFunds
    );
    let text = metrics(&app, &ops).await;
    assert_eq!(
        sample(
            &text,
            r#"tally_commands_total{aggregate="account",command="deposit",outcome="accepted"}"#
        ),
        Some(K as f64),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"tally_commands_total{aggregate="account",command="withdraw",outcome="insufficient_funds"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"tally_command_duration_seconds_count{aggregate="account",command="deposit"}"#
        ),
        Some(K as f64)
    );
    assert!(sample(&text, "tally_command_conflict_retries_total").is_some());
    assert!(sample(&text, "tally_db_pool_connections_max").is_some());
    // The outbox drains to zero once the relay has published everything.
    app.wait_for_stream_count(K as u64 + 1, Duration::from_secs(10))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(&metrics(&app, &ops).await, "tally_outbox_backlog_events") != Some(0.0) {
        assert!(Instant::now() < deadline, "outbox backlog never 0");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // HTTP: by route template and status, never by raw path. The relay having published says
    // nothing about the projection, so the reads wait for the last deposit.
    for _ in 0..3 {
        let read = app
            .http_get_with_token("/v1/accounts/m-1", &last_token)
            .await;
        assert_eq!(read.status(), 200);
    }
    assert_eq!(app.http_get("/v1/accounts/nobody").await.status(), 404);
    let text = metrics(&app, &app.http_base).await;
    assert_eq!(
        sample(
            &text,
            r#"tally_http_requests_total{route="/v1/accounts/{account_id}",status="200"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"tally_http_requests_total{route="/v1/accounts/{account_id}",status="404"}"#
        ),
        Some(1.0)
    );
    assert!(!text.contains("m-1"), "an id leaked into a label");
}

#[tokio::test]
async fn projection_lag_rises_while_stopped_and_returns_to_zero_after_catch_up() {
    let mut app = TestApp::spawn().await;
    app.stop_projections().await;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "lag-1", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    for _ in 0..4 {
        accepted(
            &app.send(
                "account.deposit",
                json!({"account_id": "lag-1", "amount": 1}),
            )
            .await,
        );
    }
    app.wait_for_stream_count(5, Duration::from_secs(10)).await;
    let series = r#"tally_projection_lag_events{projection="accounts"}"#;
    let behind = sample(&metrics(&app, &app.http_base).await, series);
    assert_eq!(behind, Some(5.0));
    app.start_projections().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(&app, &app.http_base).await;
        if sample(&text, series) == Some(0.0) {
            assert_eq!(
                sample(
                    &text,
                    r#"tally_projection_lag_seconds{projection="accounts"}"#
                ),
                Some(0.0)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lag never returned to 0:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let projections = metrics(&app, &format!("http://{}", app.projections_ops_addr)).await;
    assert!(
        sample(
            &projections,
            r#"tally_projection_batch_size_count{projection="accounts"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{projections}"
    );
}

/// Sends `command` with a W3C `traceparent` of trace `trace`.
async fn send_traced(
    app: &TestApp,
    command: &str,
    body: serde_json::Value,
    trace: &str,
) -> domain::CommandReply {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        format!("00-{trace}-00f067aa0ba902b7-01").as_str(),
    );
    app.send_raw(command, headers, serde_json::to_vec(&body).unwrap())
        .await
}

/// Waits until the spans of `trace` include every name in `names`.
async fn wait_for_spans(trace: &str, names: &[&str]) -> Vec<tests::span_capture::CapturedSpan> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let spans = tests::span_capture::spans_of(trace);
        if names.iter().all(|n| spans.iter().any(|s| s.name == *n)) {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace}: wanted {names:?}, got {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn one_trace_from_a_command_to_every_read_model_update() {
    // Settled step by step: the process manager's commands are what this checks.
    let app = super::transfers::spawn_steps().await;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "tr-a", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "tr-b", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    // A deposit: the command, the relay, the projection, each carrying the client's trace.
    let deposit_trace = uuid::Uuid::new_v4().simple().to_string();
    accepted(
        &send_traced(
            &app,
            "account.deposit",
            json!({"account_id": "tr-a", "amount": 100}),
            &deposit_trace,
        )
        .await,
    );
    let spans = wait_for_spans(&deposit_trace, &["execute", "relay_publish", "project"]).await;
    let targets: Vec<&str> = spans.iter().map(|s| s.target.as_str()).collect();
    for crate_name in ["command_service", "projections"] {
        assert!(
            targets.iter().any(|t| t.starts_with(crate_name)),
            "{crate_name} missing from {spans:?}"
        );
    }
    // A transfer: the process manager's steps stay in the client's trace, through both
    // projections.
    let transfer_trace = uuid::Uuid::new_v4().simple().to_string();
    let reply = send_traced(
        &app,
        "transfer.request",
        json!({"transfer_id": uuid::Uuid::now_v7(), "from": "tr-a", "to": "tr-b", "amount": 40}),
        &transfer_trace,
    )
    .await;
    accepted(&reply);
    super::transfers::settled(&app, &reply).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let spans = wait_for_spans(
            &transfer_trace,
            &["execute", "relay_publish", "project", "transfer_step"],
        )
        .await;
        // The request and the six steps the process manager sent, all in the client's trace.
        let executed = spans.iter().filter(|s| s.name == "execute").count();
        if executed >= 7 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{executed} commands in the trace: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // HTTP requests continue an incoming trace too.
    let http_trace = uuid::Uuid::new_v4().simple().to_string();
    let response = app
        .http
        .get(format!("{}/v1/accounts/tr-a", app.http_base))
        .header(
            "traceparent",
            format!("00-{http_trace}-00f067aa0ba902b7-01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    wait_for_spans(&http_trace, &["http_request"]).await;
}

/// A minimal OTLP/HTTP receiver: answers every request 200 and keeps the raw bytes of each
/// (headers and the whole body, by its `content-length`).
async fn otlp_receiver() -> (
    u16,
    std::sync::Arc<tokio::sync::Mutex<Vec<u8>>>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&received);
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let sink = std::sync::Arc::clone(&sink);
            tokio::spawn(async move {
                let mut pending: Vec<u8> = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    // A whole request: headers, then content-length bytes of body.
                    let request_len = loop {
                        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&pending[..end]).to_lowercase();
                            let body = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if pending.len() >= end + 4 + body {
                                break Some(end + 4 + body);
                            }
                        }
                        match tokio::time::timeout(Duration::from_secs(10), socket.read(&mut chunk))
                            .await
                        {
                            Ok(Ok(n)) if n > 0 => pending.extend_from_slice(&chunk[..n]),
                            _ => break None,
                        }
                    };
                    let Some(len) = request_len else { return };
                    sink.lock().await.extend(pending.drain(..len));
                    if socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, received, task)
}

#[tokio::test]
async fn with_an_otlp_endpoint_the_command_service_exports_the_clients_trace() {
    let mut app = TestApp::spawn().await;
    let (port, received, receiver) = otlp_receiver().await;
    app.stop_command_service().await;
    let ops_port = tests::child::free_port();
    let mut args = app.command_service_args(&[]);
    args.remove(0);
    args.retain(|a| !a.starts_with("--ops-addr"));
    let mut child =
        std::process::Command::new(tests::binaries::workspace_binary("command-service"))
            .args(&args)
            .arg(format!("--ops-addr=127.0.0.1:{ops_port}"))
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{port}"),
            )
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("TALLY_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !app
        .http
        .get(format!("http://127.0.0.1:{ops_port}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "the binary never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let reply = send_traced(
        &app,
        "account.open",
        json!({"account_id": "otlp-1", "owner": "o", "currency": "EUR"}),
        &trace,
    )
    .await;
    accepted(&reply);
    // The batch exporter sends within its schedule delay (100 ms here). Nothing in this test
    // may block the runtime meanwhile: the receiver runs on it.
    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bytes = received.lock().await.clone();
        if bytes.windows(16).any(|w| w == trace_bytes.as_slice()) {
            let text = String::from_utf8_lossy(&bytes);
            assert!(text.contains("POST /v1/traces"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no span of trace {trace} reached the OTLP endpoint ({} bytes received)",
            bytes.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A clean stop (SIGTERM) flushes and exits; waited for off the runtime.
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    receiver.abort();
}

#[tokio::test]
async fn the_dashboard_charts_only_metrics_the_services_export() {
    let app = TestApp::spawn().await;
    let reply = app
        .send(
            "account.open",
            json!({"account_id": "dash-1", "owner": "o", "currency": "EUR"}),
        )
        .await;
    accepted(&reply);
    let CommandReply::Accepted {
        consistency_token, ..
    } = &reply
    else {
        unreachable!()
    };
    let read = app
        .http_get_with_token("/v1/accounts/dash-1", consistency_token)
        .await;
    assert_eq!(read.status(), 200);
    let mut exported = String::new();
    for base in [
        format!("http://{}", app.command_ops_addr),
        format!("http://{}", app.projections_ops_addr),
        format!("http://{}", app.process_manager_ops_addr),
        app.http_base.clone(),
    ] {
        exported.push_str(&metrics(&app, &base).await);
    }
    let dashboard = std::fs::read_to_string(
        tests::binaries::repo_root().join("deploy/grafana/tally-dashboard.json"),
    )
    .unwrap();
    let mut charted: Vec<String> = Vec::new();
    for (i, _) in dashboard.match_indices("tally_") {
        let name: String = dashboard[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.len() > "tally_".len() && !charted.contains(&name) {
            charted.push(name);
        }
    }
    assert!(charted.len() >= 10, "{charted:?}");
    for name in charted {
        assert!(
            exported.lines().any(|l| l.starts_with(&name)),
            "the dashboard charts {name}, which no service exports"
        );
    }
}
