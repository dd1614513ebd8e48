//! The attacker's view: a client holding nothing but the shared `tally-client` NATS password
//! (and, where said, a token of its own) tries to read, move or erase what is not its own.
//! Each test ends on a positive marker (a reply that arrived, a counter that moved) before it
//! checks that something did not happen, so none passes merely by being early.

use std::time::Duration;

use async_nats::HeaderMap;
use domain::CommandReply;
use futures::{FutureExt, StreamExt};
use platform::auth::Scope;
use serde_json::json;
use tests::client::{accepted, rejected_code};
use uuid::Uuid;

use super::{Secured, token, violation};

/// Every wildcard a client could try to read other users' traffic through.
const WILDCARDS: [&str; 15] = [
    ">",
    "*.>",
    "_INBOX.>",
    "_INBOX_command-service.>",
    "_INBOX_projections.>",
    "_INBOX_process-manager.>",
    "_INBOX_query-service.>",
    "_INBOX_tally-operator.>",
    "tally.>",
    "tally.evt.>",
    "tally.cmd.>",
    "tally.jobs.>",
    "tally.results.>",
    "tally.audit.>",
    "$JS.>",
];

/// Subjects a client must not publish on: events, audit, results, dead letters, other users'
/// inboxes and every JetStream API verb that changes or reads a stream.
const FORBIDDEN_PUBLISH: [&str; 16] = [
    "tally.evt.account.forged",
    "tally.audit.digest",
    "tally.results.00000000-0000-0000-0000-000000000000",
    "tally.dlq.accounts",
    "_INBOX_command-service.x.y",
    "_INBOX_process-manager.x.y",
    "$JS.API.STREAM.PURGE.TALLY_EVENTS",
    "$JS.API.STREAM.DELETE.TALLY_EVENTS",
    "$JS.API.STREAM.MSG.DELETE.TALLY_EVENTS",
    "$JS.API.STREAM.UPDATE.TALLY_EVENTS",
    "$JS.API.STREAM.CREATE.MINE",
    "$JS.API.STREAM.MSG.GET.TALLY_COMMANDS",
    "$JS.API.DIRECT.GET.TALLY_COMMANDS",
    "$JS.API.CONSUMER.CREATE.TALLY_COMMANDS.spy",
    "$JS.API.CONSUMER.DELETE.TALLY_EVENTS.projection-accounts",
    "$JS.ACK.TALLY_COMMANDS.command-service.1.1.1.1.0",
];

/// Reply subjects a request may name to make the command-service publish somewhere with its
/// own rights.
fn hostile_reply_subjects() -> Vec<String> {
    vec![
        "tally.evt.account.injected-x".to_owned(),
        "tally.audit.digest".to_owned(),
        format!("tally.results.{}", Uuid::now_v7()),
        "tally.dlq.accounts".to_owned(),
        "tally.cmd.account.deposit".to_owned(),
        "tally.jobs.account.deposit".to_owned(),
        "$JS.API.STREAM.PURGE.TALLY_EVENTS".to_owned(),
        "$JS.API.STREAM.DELETE.TALLY_EVENTS".to_owned(),
        "$JS.API.STREAM.MSG.DELETE.TALLY_EVENTS".to_owned(),
        "$JS.API.STREAM.PURGE.TALLY_AUDIT".to_owned(),
        "$JS.API.CONSUMER.DELETE.TALLY_EVENTS.projection-accounts".to_owned(),
        "$JS.API.STREAM.UPDATE.TALLY_EVENTS".to_owned(),
        "_INBOX.>".to_owned(),
        "_INBOX.*".to_owned(),
    ]
}

/// Messages in `stream`, read as the command-service (which may read every stream's info).
async fn messages_in(secured: &Secured, stream: &str) -> u64 {
    let (service, _) = secured.connect("command-service").await;
    let mut stream = async_nats::jetstream::new(service)
        .get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("stream {stream} is gone: {e}"));
    stream.info().await.unwrap().state.messages
}

async fn count(app: &tests::TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.db).await.unwrap()
}

/// Whether `subscriber` holds a message right now (after the caller flushed its connection).
fn holds_a_message(subscriber: &mut async_nats::Subscriber) -> Option<String> {
    match subscriber.next().now_or_never() {
        Some(Some(message)) => Some(format!(
            "{} ({} bytes)",
            message.subject,
            message.payload.len()
        )),
        _ => None,
    }
}

#[tokio::test]
async fn a_client_reads_no_one_elses_messages() {
    let secured = Secured::start().await;
    let app = &secured.app;
    let (spy, mut errors) = secured.connect("tally-client").await;
    let mut spies = Vec::new();
    for subject in WILDCARDS {
        spies.push((subject, spy.subscribe(subject).await.unwrap()));
        let error = violation(&mut errors).await;
        assert!(
            error.contains("permissions violation") && error.contains("subscription"),
            "a client may subscribe to {subject}: {error:?}"
        );
    }
    // Even with the default inbox prefix of every NATS client.
    let (default_inbox, mut default_errors) =
        secured.connect_with_inbox("tally-client", "_INBOX").await;
    let _ = default_inbox.subscribe("_INBOX.>").await;
    assert!(
        violation(&mut default_errors)
            .await
            .contains("permissions violation")
    );

    // Traffic of every kind: commands and replies, a durable command carrying the admin's
    // token, events to both projections and the process manager, reads.
    super::super::transfers::open(app, "h-a", "EUR", 100).await;
    super::super::transfers::open(app, "h-b", "EUR", 0).await;
    let reply = super::super::transfers::request(app, Uuid::now_v7(), "h-a", "h-b", 60).await;
    let transfer = super::super::transfers::settled(app, &reply).await;
    assert_eq!(transfer["status"], "completed");
    let (owner, _) = secured.connect("tally-client").await;
    let id = Uuid::now_v7();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.to_string().as_str());
    headers.insert(
        "Authorization",
        format!("Bearer {}", tests::app::admin_token()).as_str(),
    );
    async_nats::jetstream::new(owner.clone())
        .publish_with_headers(
            "tally.jobs.account.deposit",
            headers,
            serde_json::to_vec(&json!({"account_id": "h-b", "amount": 1}))
                .unwrap()
                .into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    // The marker: the durable command ran (its event is in the store), so its delivery to the
    // command-service, and every message before it, has been routed.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count(
        app,
        &format!("SELECT count(*) FROM command_log WHERE command_id = '{id}'"),
    )
    .await
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the durable command never ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One more request/reply after it, then a round trip on the spy's own connection: whatever
    // the server routed to the spy before now has arrived.
    accepted(
        &app.send("account.deposit", json!({"account_id": "h-a", "amount": 1}))
            .await,
    );
    spy.flush().await.unwrap();
    for (subject, subscriber) in &mut spies {
        assert_eq!(
            holds_a_message(subscriber),
            None,
            "a client read through {subject}"
        );
    }
}

#[tokio::test]
async fn stored_tokens_are_readable_only_by_the_command_service() {
    let mut secured = Secured::start().await;
    secured.app.stop_command_service().await;
    let (client, _) = secured.connect("tally-client").await;
    let mut headers = HeaderMap::new();
    headers.insert(
        "Authorization",
        format!("Bearer {}", tests::app::admin_token()).as_str(),
    );
    async_nats::jetstream::new(client)
        .publish_with_headers(
            "tally.jobs.account.open",
            headers,
            serde_json::to_vec(&json!({"account_id": "h-t", "owner": "o", "currency": "EUR"}))
                .unwrap()
                .into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        messages_in(&secured, "TALLY_COMMANDS").await,
        1,
        "the durable command (and its token) is stored"
    );
    for user in [
        "tally-client",
        "tally-operator",
        "projections",
        "process-manager",
        "query-service",
    ] {
        let (connection, _) = secured.connect(user).await;
        let js = async_nats::jetstream::new(connection.clone());
        let read = tokio::time::timeout(Duration::from_secs(3), async {
            let stream = js.get_stream("TALLY_COMMANDS").await.ok()?;
            stream.get_raw_message(1).await.ok()
        })
        .await;
        assert!(
            matches!(read, Err(_) | Ok(None)),
            "{user} read a stored durable command"
        );
        let direct = tokio::time::timeout(
            Duration::from_secs(3),
            connection.request("$JS.API.DIRECT.GET.TALLY_COMMANDS", r#"{"seq":1}"#.into()),
        )
        .await;
        assert!(
            !matches!(&direct, Ok(Ok(m)) if !m.payload.is_empty()),
            "{user} read a stored durable command directly"
        );
        let consumer = tokio::time::timeout(Duration::from_secs(3), async {
            let stream = js.get_stream("TALLY_COMMANDS").await.ok()?;
            stream
                .create_consumer(async_nats::jetstream::consumer::pull::Config {
                    durable_name: Some(format!("spy-{user}")),
                    ..Default::default()
                })
                .await
                .ok()
        })
        .await;
        assert!(
            matches!(consumer, Err(_) | Ok(None)),
            "{user} made a consumer on the commands stream"
        );
    }
    // The command-service itself still runs it.
    secured.app.start_command_service(&[]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count(
        &secured.app,
        "SELECT count(*) FROM events WHERE aggregate_id = 'h-t'",
    )
    .await
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the durable command never ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn replies_go_only_to_inboxes() {
    let secured = Secured::start().await;
    let app = &secured.app;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "h-r", "owner": "mallory", "currency": "EUR"}),
        )
        .await,
    );
    let events_before = messages_in(&secured, "TALLY_EVENTS").await;
    let audit_before = messages_in(&secured, "TALLY_AUDIT").await;
    let stored_before = count(app, "SELECT count(*) FROM events").await;
    let (attacker, _) = secured.connect("tally-client").await;
    let mallory = token(&[Scope::AccountsWrite], Some("mallory"));
    let mut ids = Vec::new();
    let replies = hostile_reply_subjects();
    for reply in &replies {
        // Once with a token whose command would be accepted, once with none at all.
        for authorization in [Some(mallory.as_str()), None] {
            let id = Uuid::now_v7();
            ids.push(id);
            let mut headers = HeaderMap::new();
            headers.insert("Tally-Command-Id", id.to_string().as_str());
            if let Some(t) = authorization {
                headers.insert("Authorization", format!("Bearer {t}").as_str());
            }
            attacker
                .publish_with_reply_and_headers(
                    "tally.cmd.account.deposit",
                    reply.clone(),
                    headers,
                    serde_json::to_vec(&json!({"account_id": "h-r", "amount": 7}))
                        .unwrap()
                        .into(),
                )
                .await
                .unwrap();
        }
    }
    attacker.flush().await.unwrap();
    // The marker: the command-service counted every one of them as refused.
    let refused = replies.len() * 2;
    let metrics = format!("http://{}/metrics", app.command_ops_addr);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = app
            .http
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let counted = text
            .lines()
            .find_map(|l| l.strip_prefix("tally_command_reply_subjects_refused_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if counted >= refused as f64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{counted} of {refused} hostile reply subjects refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing ran, nothing was published anywhere, every stream and consumer is intact.
    for id in &ids {
        assert_eq!(
            count(
                app,
                &format!("SELECT count(*) FROM command_log WHERE command_id = '{id}'")
            )
            .await,
            0,
            "a request with a hostile reply subject ran"
        );
    }
    assert_eq!(
        count(app, "SELECT count(*) FROM events").await,
        stored_before
    );
    assert_eq!(messages_in(&secured, "TALLY_EVENTS").await, events_before);
    assert_eq!(messages_in(&secured, "TALLY_AUDIT").await, audit_before);
    assert_eq!(messages_in(&secured, "TALLY_DLQ").await, 0);
    let (service, _) = secured.connect("projections").await;
    let events = async_nats::jetstream::new(service)
        .get_stream("TALLY_EVENTS")
        .await
        .unwrap();
    for consumer in ["projection-accounts", "projection-transfers"] {
        events
            .consumer_info(consumer)
            .await
            .unwrap_or_else(|e| panic!("consumer {consumer} is gone: {e}"));
    }
    // And the service still answers honest requests, read-your-writes included.
    let reply = app
        .send("account.deposit", json!({"account_id": "h-r", "amount": 5}))
        .await;
    let (_, version) = accepted(&reply);
    assert_eq!(version, 2);
    let CommandReply::Accepted {
        consistency_token, ..
    } = &reply
    else {
        unreachable!()
    };
    let read = app
        .http_get_with_token("/v1/accounts/h-r", consistency_token)
        .await;
    assert_eq!(read.status(), 200);
}

#[tokio::test]
async fn a_client_publishes_only_commands() {
    let secured = Secured::start().await;
    let events_before = messages_in(&secured, "TALLY_EVENTS").await;
    let (client, mut errors) = secured.connect("tally-client").await;
    for subject in FORBIDDEN_PUBLISH {
        client
            .publish_with_reply(subject, "_INBOX_tally-client.x.y", r#"{"seq":1}"#.into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        let error = violation(&mut errors).await;
        assert!(
            error.contains("permissions violation") && error.contains("publish"),
            "a client may publish on {subject}: {error:?}"
        );
    }
    assert_eq!(messages_in(&secured, "TALLY_EVENTS").await, events_before);
    for stream in ["TALLY_EVENTS", "TALLY_COMMANDS", "TALLY_AUDIT", "TALLY_DLQ"] {
        messages_in(&secured, stream).await; // still there
    }
}

#[tokio::test]
async fn no_stream_can_be_purged_or_erased() {
    // Without users at all (the development server): the streams themselves refuse.
    let app = tests::TestApp::spawn().await;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "h-p", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    app.wait_for_stream_count(1, Duration::from_secs(10)).await;
    let streams = [
        app.streams.events.clone(),
        app.streams.commands.clone(),
        app.streams.audit.clone(),
        app.streams.dead_letters.clone(),
    ];
    for name in &streams {
        let stream = app.jetstream.get_stream(name).await.unwrap();
        assert!(stream.purge().await.is_err(), "{name} was purged");
        assert!(
            stream.delete_message(1).await.is_err(),
            "a message of {name} was erased"
        );
    }
    assert_eq!(app.events_in_stream_count().await, 1);
}

#[tokio::test]
async fn malformed_headers_are_refused_and_write_nothing() {
    let secured = Secured::start().await;
    let app = &secured.app;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "h-m", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    let stored_before = count(app, "SELECT count(*) FROM events").await;
    let logged_before = count(app, "SELECT count(*) FROM command_log").await;
    let admin = format!("Bearer {}", tests::app::admin_token());
    let long = "x".repeat(16 * 1024);
    let cases: Vec<Vec<(&str, String)>> = vec![
        vec![("Authorization", "Bearer".to_owned())],
        vec![("Authorization", "Basic dGFsbHk6dGFsbHk=".to_owned())],
        vec![("Authorization", format!("Bearer {long}"))],
        vec![("Authorization", "Bearer a.b.c".to_owned())],
        vec![
            ("Authorization", admin.clone()),
            ("Tally-Command-Id", "not-a-uuid".to_owned()),
        ],
        vec![
            ("Authorization", admin.clone()),
            ("Tally-Command-Id", long.clone()),
        ],
        vec![
            ("Authorization", admin.clone()),
            ("Tally-Expected-Version", "-1".to_owned()),
        ],
        vec![
            ("Authorization", admin.clone()),
            (
                "Tally-Expected-Version",
                "99999999999999999999999".to_owned(),
            ),
        ],
        vec![
            ("Authorization", admin.clone()),
            ("Tally-Correlation-Id", "x".to_owned()),
        ],
        vec![
            ("Authorization", admin.clone()),
            ("Tally-Causation-Id", long.clone()),
        ],
    ];
    for case in &cases {
        let mut headers = HeaderMap::new();
        for (name, value) in case {
            headers.insert(*name, value.as_str());
        }
        let reply = app
            .send_raw(
                "account.deposit",
                headers,
                serde_json::to_vec(&json!({"account_id": "h-m", "amount": 3})).unwrap(),
            )
            .await;
        let code = rejected_code(&reply);
        assert!(
            matches!(
                code,
                domain::ErrorCode::Unauthenticated | domain::ErrorCode::SchemaViolation
            ),
            "{case:?} answered {code:?}"
        );
    }
    // The honest request after them is the marker that all were handled.
    accepted(
        &app.send("account.deposit", json!({"account_id": "h-m", "amount": 1}))
            .await,
    );
    assert_eq!(
        count(app, "SELECT count(*) FROM events").await,
        stored_before + 1
    );
    assert_eq!(
        count(app, "SELECT count(*) FROM command_log").await,
        logged_before + 1
    );
}

#[tokio::test]
async fn a_message_on_the_events_stream_that_is_no_event_is_dead_lettered_once() {
    // Published straight to the stream, as a user with publish rights there could: the
    // projection must not hold it in ack-pending and redeliver it forever.
    let app = tests::TestApp::spawn().await;
    app.jetstream
        .publish(
            format!("{}.evt.account.injected-x", app.subjects.prefix()),
            r#"{"status":"rejected"}"#.into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let mut dead_letters = app
        .jetstream
        .get_stream(&app.streams.dead_letters)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while dead_letters.info().await.unwrap().state.messages == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the unreadable message was never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let letter = dead_letters.get_raw_message(1).await.unwrap();
    let error = letter
        .headers
        .get("Tally-Error")
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    assert!(error.contains("unreadable"), "{error}");
    // Terminated, not pending: and the projection goes on with real events.
    let reply = app
        .send(
            "account.open",
            json!({"account_id": "h-after", "owner": "o", "currency": "EUR"}),
        )
        .await;
    let CommandReply::Accepted {
        consistency_token, ..
    } = &reply
    else {
        panic!("{reply:?}")
    };
    assert_eq!(
        app.http_get_with_token("/v1/accounts/h-after", consistency_token)
            .await
            .status(),
        200
    );
    let events = app.jetstream.get_stream(&app.streams.events).await.unwrap();
    let consumer = events.consumer_info("projection-accounts").await.unwrap();
    assert_eq!(consumer.num_ack_pending, 0, "{consumer:?}");
    assert_eq!(
        dead_letters.info().await.unwrap().state.messages,
        1,
        "dead-lettered more than once"
    );
}

/// Bounded fuzz of the live ingress: arbitrary subjects under `cmd`, headers and bodies,
/// without a valid token or with one and a body that is not a command. Every request gets a
/// rejection with a stable code (so nothing panicked and the service still answers), and
/// nothing is written.
#[tokio::test]
async fn arbitrary_requests_get_a_clear_rejection_and_write_nothing() {
    use proptest::strategy::{Strategy, ValueTree};
    let app = tests::TestApp::spawn().await;
    let client = token(&[Scope::AccountsWrite, Scope::TransfersWrite], Some("fuzz"));
    let case = (
        proptest::sample::select(vec![
            "account.deposit",
            "account.open",
            "account.withdraw",
            "transfer.request",
            "account.debit",
            "nope.nope",
        ]),
        proptest::collection::vec(
            (
                proptest::sample::select(vec![
                    "Authorization",
                    "Tally-Command-Id",
                    "Tally-Expected-Version",
                    "Tally-Correlation-Id",
                    "traceparent",
                    "X-Other",
                ]),
                "[ -~]{0,200}",
            ),
            0..5,
        ),
        proptest::bool::ANY,
        proptest::collection::vec(proptest::num::u8::ANY, 0..2_048),
    );
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let stored_before = count(&app, "SELECT count(*) FROM events").await;
    let logged_before = count(&app, "SELECT count(*) FROM command_log").await;
    for _ in 0..150 {
        let (command, headers, with_token, mut body) =
            case.new_tree(&mut runner).unwrap().current();
        // A body that is never a command: not JSON, whatever the bytes.
        body.insert(0, b'#');
        let mut map = HeaderMap::new();
        for (name, value) in &headers {
            map.insert(*name, value.as_str());
        }
        if with_token {
            map.insert("Authorization", format!("Bearer {client}").as_str());
        } else if map.get("Authorization").is_none() {
            map.insert("Authorization", "");
        }
        let reply = app.send_raw(command, map, body).await;
        let code = rejected_code(&reply);
        assert!(domain::ErrorCode::ALL.contains(&code), "{code:?}");
    }
    // The service still works, and the fuzz wrote nothing.
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "h-fuzz", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM events").await,
        stored_before + 1
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM command_log").await,
        logged_before + 1
    );
}
