//! Durable commands: published while the command-service is down, executed in order when it
//! returns, each result in the command log and on the inbox named in `Tally-Reply-To`.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::HeaderMap;
use domain::{CommandReply, ErrorCode};
use futures::StreamExt;
use serde_json::json;
use tests::TestApp;
use uuid::Uuid;

/// The inbox this test's durable commands name for their results (`_INBOX.<prefix>.<id>`).
fn results_inbox(app: &TestApp, id: &str) -> String {
    format!("_INBOX.{}.{id}", app.subjects.prefix())
}

/// Every result of this test's durable commands.
fn results_inboxes(app: &TestApp) -> String {
    results_inbox(app, ">")
}

async fn publish_job(app: &TestApp, command: &str, id: Uuid, body: serde_json::Value) {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.to_string().as_str());
    headers.insert(
        "Tally-Reply-To",
        results_inbox(app, &id.to_string()).as_str(),
    );
    headers.insert(
        "Authorization",
        format!("Bearer {}", tests::app::admin_token()).as_str(),
    );
    let ack = app
        .jetstream
        .publish_with_headers(
            format!("{}.jobs.{command}", app.subjects.prefix()),
            headers,
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, app.streams.commands);
}

#[tokio::test]
async fn durable_commands_wait_for_the_service_and_run_in_order() {
    let mut app = TestApp::spawn().await;
    app.stop_command_service().await;
    let mut results = app.nats.subscribe(results_inboxes(&app)).await.unwrap();

    let open = Uuid::new_v4();
    let deposits: Vec<Uuid> = (0..30).map(|_| Uuid::new_v4()).collect();
    let bad = Uuid::new_v4();
    publish_job(
        &app,
        "account.open",
        open,
        json!({"account_id": "d1", "owner": "o", "currency": "EUR"}),
    )
    .await;
    for (i, id) in deposits.iter().enumerate() {
        publish_job(
            &app,
            "account.deposit",
            *id,
            json!({"account_id": "d1", "amount": i + 1}),
        )
        .await;
    }
    // A client retrying a publish with the same id: the stream keeps one.
    publish_job(
        &app,
        "account.deposit",
        deposits[0],
        json!({"account_id": "d1", "amount": 1}),
    )
    .await;
    publish_job(&app, "account.deposit", bad, json!({"account_id": "d1"})).await;
    // Nothing runs while the service is down: every distinct job (the retry deduplicated) is
    // still in the work queue, and the consumer has delivered none of them.
    let mut stream = app
        .jetstream
        .get_stream(&app.streams.commands)
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 32);
    let consumer = stream
        .consumer_info("command-service") // `jobs::CONSUMER`
        .await
        .unwrap();
    assert_eq!(
        (consumer.num_pending, consumer.num_ack_pending),
        (32, 0),
        "jobs delivered while the service was down: {consumer:?}"
    );
    assert_eq!(app.events_in_store().await, 0);

    app.start_command_service(&[]).await;
    let mut replies: HashMap<Uuid, CommandReply> = HashMap::new();
    while replies.len() < 32 {
        let message = tokio::time::timeout(Duration::from_secs(20), results.next())
            .await
            .expect("all results within 20 s")
            .unwrap();
        let reply: CommandReply = serde_json::from_slice(&message.payload).unwrap();
        assert!(message.subject.ends_with(&reply.command_id().to_string()));
        replies.insert(reply.command_id(), reply);
    }
    // In publish order: the open first, then each deposit gets the next version.
    assert!(matches!(
        replies[&open],
        CommandReply::Accepted { version: 1, .. }
    ));
    for (i, id) in deposits.iter().enumerate() {
        match &replies[id] {
            CommandReply::Accepted { version, .. } => assert_eq!(*version, i as u64 + 2),
            other => panic!("deposit {i} not accepted: {other:?}"),
        }
    }
    match &replies[&bad] {
        CommandReply::Rejected { error, .. } => assert_eq!(error.code, ErrorCode::SchemaViolation),
        other => panic!("bad command accepted: {other:?}"),
    }
    assert_eq!(app.events_in_store().await, 31);

    // Every result, the rejection included, is readable later from the command log.
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM command_log")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(logged, 32);
    // And nothing is left in the work queue.
    wait_for_empty_work_queue(&app).await;
}

#[tokio::test]
async fn two_instances_neither_duplicate_nor_reorder_events() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    // A second command-service on the same database and prefix: two relays compete, and the
    // queue group spreads the commands over both executors.
    let config =
        <command_service::Config as clap::Parser>::try_parse_from(app.command_service_args(&[]))
            .unwrap();
    let second = command_service::Application::build(config).await.unwrap();
    let stop_second = tokio_util::sync::CancellationToken::new();
    let second = tokio::spawn(second.run(stop_second.clone()));

    for a in 0..10 {
        tests::client::accepted(
            &app.send(
                "account.open",
                json!({"account_id": format!("m{a}"), "owner": "o", "currency": "EUR"}),
            )
            .await,
        );
    }
    let mut sends = Vec::new();
    for i in 0..200 {
        let app = std::sync::Arc::clone(&app);
        sends.push(tokio::spawn(async move {
            app.send(
                "account.deposit",
                json!({"account_id": format!("m{}", i % 10), "amount": 1}),
            )
            .await
        }));
    }
    for send in sends {
        tests::client::accepted(&send.await.unwrap());
    }
    app.wait_for_stream_count(210, Duration::from_secs(20))
        .await;
    // A marker committed after all of them: one relay leads at a time and publishes in commit
    // order, so once the marker is in the stream every earlier event, and any duplicate of
    // one, is there before it.
    tests::client::accepted(
        &app.send(
            "account.open",
            json!({"account_id": "marker", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let stream = loop {
        let stream = app.events_in_stream().await;
        if stream.iter().any(|e| e.message.aggregate_id == "marker") {
            break stream;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the marker event never reached the stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stream.len(), 211, "duplicates in the stream");
    let mut last: HashMap<String, u64> = HashMap::new();
    for event in &stream {
        let previous = last.insert(event.message.aggregate_id.clone(), event.message.sequence);
        if previous.unwrap_or(0) + 1 != event.message.sequence {
            let rows: Vec<(i64, String, i64)> = sqlx::query_as(
                "SELECT sequence, tx_id::text, global_position FROM events WHERE aggregate_id = $1 ORDER BY sequence",
            )
            .bind(&event.message.aggregate_id)
            .fetch_all(&app.db)
            .await
            .unwrap();
            let in_stream: Vec<(u64, u64)> = stream
                .iter()
                .filter(|e| e.message.aggregate_id == event.message.aggregate_id)
                .map(|e| (e.stream_sequence, e.message.sequence))
                .collect();
            panic!(
                "{} out of order at {}: stored rows (sequence, tx_id, global_position) {rows:?}; stream (stream seq, seq) {in_stream:?}",
                event.message.aggregate_id, event.message.sequence
            );
        }
    }
    stop_second.cancel();
    second.await.unwrap().unwrap();
}

/// Two deliveries with a short pool wait: without in-place waiting, a command spends that
/// budget in about a second during an outage (up to 250 ms per failed attempt, a 0.5 s nak
/// delay between the two).
const BUDGET_FLAGS: [&str; 2] = ["--jobs-max-deliver=2", "--db-acquire-timeout-ms=250"];
const OUTAGE_ACCOUNTS: usize = 3;
const OUTAGE_COMMANDS: usize = 10;

/// A PostgreSQL of the test's own (killed and restarted by it), the services on it with the
/// command-service on `BUDGET_FLAGS`, the outage accounts opened, and a subscription to results.
async fn outage_setup(
    name: &str,
) -> (
    tests::postgres_server::PostgresServer,
    TestApp,
    async_nats::Subscriber,
) {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!(
        "tally-test-{}-{name}-{}",
        std::process::id(),
        Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let postgres = tests::postgres_server::PostgresServer::start_durable(&dir).unwrap();
    let mut app = TestApp::spawn_with_database(postgres.url("postgres")).await;
    app.stop_command_service().await;
    app.start_command_service(&BUDGET_FLAGS).await;
    for a in 0..OUTAGE_ACCOUNTS {
        tests::client::accepted(
            &app.send(
                "account.open",
                json!({"account_id": format!("w{a}"), "owner": "o", "currency": "EUR"}),
            )
            .await,
        );
    }
    let results = app.nats.subscribe(results_inboxes(&app)).await.unwrap();
    (postgres, app, results)
}

/// Publishes the outage commands: command i deposits i + 1 on account w{i % OUTAGE_ACCOUNTS}.
async fn publish_outage_deposits(app: &TestApp) -> Vec<Uuid> {
    let ids: Vec<Uuid> = (0..OUTAGE_COMMANDS).map(|_| Uuid::new_v4()).collect();
    for (i, id) in ids.iter().enumerate() {
        publish_job(
            app,
            "account.deposit",
            *id,
            json!({"account_id": format!("w{}", i % OUTAGE_ACCOUNTS), "amount": i + 1}),
        )
        .await;
    }
    ids
}

/// `tally_durable_commands_waiting{cause="unavailable"}` on the command-service, if above 0.
async fn waiting_for_postgres(app: &TestApp) -> Option<f64> {
    let text = app
        .http
        .get(format!("http://{}/metrics", app.command_ops_addr))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("tally_durable_commands_waiting{cause=\"unavailable\"} "))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .filter(|n| *n > 0.0)
}

/// Every outage command is answered once, accepted (none `unavailable`), its deposit stored
/// once, in publish order per account, and no job is left in the work queue.
async fn assert_decided_once_in_order(
    app: &TestApp,
    results: &mut async_nats::Subscriber,
    ids: &[Uuid],
) {
    let mut replies: HashMap<Uuid, Vec<CommandReply>> = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ids.iter().any(|id| !replies.contains_key(id)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(Some(message)) = tokio::time::timeout(left, results.next()).await else {
            panic!(
                "{} of {} durable commands answered within 30 s of PostgreSQL's return: {replies:?}",
                replies.len(),
                ids.len()
            );
        };
        let reply: CommandReply = serde_json::from_slice(&message.payload).unwrap();
        replies.entry(reply.command_id()).or_default().push(reply);
    }
    for (i, id) in ids.iter().enumerate() {
        let [reply] = replies[id].as_slice() else {
            panic!("command {i} answered more than once: {:?}", replies[id]);
        };
        assert!(
            matches!(reply, CommandReply::Accepted { .. }),
            "command {i} answered {reply:?}"
        );
    }
    // Decided once each, in publish order per account.
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, (payload->'MoneyDeposited'->>'amount')::bigint FROM events
         WHERE event_type = 'MoneyDeposited' ORDER BY aggregate_id, sequence",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    for a in 0..OUTAGE_ACCOUNTS {
        let account = format!("w{a}");
        let stored: Vec<i64> = rows
            .iter()
            .filter(|(id, _)| *id == account)
            .map(|(_, amount)| *amount)
            .collect();
        let published: Vec<i64> = (0..ids.len())
            .filter(|i| i % OUTAGE_ACCOUNTS == a)
            .map(|i| i64::try_from(i + 1).unwrap())
            .collect();
        assert_eq!(
            stored, published,
            "deposits on {account}, in sequence order"
        );
    }
    let logged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM command_log WHERE command_id = ANY($1)")
            .bind(ids)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(logged, i64::try_from(ids.len()).unwrap());
    // Every job acknowledged: the work queue is empty, so every result was published before
    // its ack and no copy is left to run again.
    wait_for_empty_work_queue(app).await;
    // A marker of our own on the results subjects, sent after that: the server routed every
    // result before it, so anything ahead of it here is a second result.
    app.nats
        .publish(results_inbox(app, "marker"), "".into())
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), results.next())
        .await
        .expect("the marker within 10 s")
        .unwrap();
    assert!(
        next.subject.ends_with(".marker"),
        "a second result: {}",
        String::from_utf8_lossy(&next.payload)
    );
}

/// Issue 21 finding 5: an outage longer than the whole redelivery budget must not turn into an
/// answer. Durable commands queued on a few accounts while PostgreSQL is down are each decided
/// exactly once when it returns, in publish order per account, and none is answered
/// `unavailable`; meanwhile `/readyz` and `/metrics` show the wait.
#[tokio::test]
async fn durable_commands_wait_out_a_postgres_outage_longer_than_the_redelivery_budget() {
    const OUTAGE: Duration = Duration::from_secs(10);
    let (mut postgres, app, mut results) = outage_setup("jobs-outage").await;

    postgres.kill();
    let ids = publish_outage_deposits(&app).await;
    // While it lasts, the wait shows: /readyz names it, /metrics counts the waiting commands.
    // (Recorded now, asserted after the outcome, so code without the wait fails on the outcome.)
    let outage_started = std::time::Instant::now();
    let mut readyz_reason = None;
    let mut waiting_metric = None;
    while outage_started.elapsed() < OUTAGE {
        if readyz_reason.is_none()
            && let Ok(response) = app
                .http
                .get(format!("http://{}/readyz", app.command_ops_addr))
                .send()
                .await
            && let Ok(report) = response.json::<serde_json::Value>().await
        {
            readyz_reason = report["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == "durable_commands" && c["ok"] == false)
                .map(|c| c["reason"].as_str().unwrap_or_default().to_owned());
        }
        if waiting_metric.is_none() {
            waiting_metric = waiting_for_postgres(&app).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    postgres.restart().unwrap();

    assert_decided_once_in_order(&app, &mut results, &ids).await;
    let reason = readyz_reason.expect("/readyz named the waiting durable commands");
    assert!(reason.contains("PostgreSQL"), "{reason}");
    assert!(
        waiting_metric.is_some(),
        "tally_durable_commands_waiting{{cause=\"unavailable\"}} > 0 during the outage"
    );
    // Ready again once the commands are decided.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while app
        .http
        .get(format!("http://{}/readyz", app.command_ops_addr))
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(
            std::time::Instant::now() < deadline,
            "command-service never ready again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A command-service stopped while durable commands wait out an outage stops promptly and
/// gives them back undecided, in order; the next one decides each exactly once, in order.
#[tokio::test]
async fn durable_commands_waiting_at_shutdown_are_given_back_undecided() {
    let (mut postgres, mut app, mut results) = outage_setup("jobs-outage-stop").await;

    postgres.kill();
    let ids = publish_outage_deposits(&app).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while waiting_for_postgres(&app).await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no durable command ever waited for PostgreSQL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopping = std::time::Instant::now();
    app.stop_command_service().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stopping took {:?}",
        stopping.elapsed()
    );
    // Given back, not dropped: every job is still in the work queue.
    let mut stream = app
        .jetstream
        .get_stream(&app.streams.commands)
        .await
        .unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        u64::try_from(OUTAGE_COMMANDS).unwrap()
    );

    postgres.restart().unwrap();
    app.start_command_service(&BUDGET_FLAGS).await;
    assert_decided_once_in_order(&app, &mut results, &ids).await;
}

/// Waits until the commands stream holds no message (work queue: every job acknowledged).
async fn wait_for_empty_work_queue(app: &TestApp) {
    let mut stream = app
        .jetstream
        .get_stream(&app.streams.commands)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let messages = stream.info().await.unwrap().state.messages;
        if messages == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{messages} jobs still in the work queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
