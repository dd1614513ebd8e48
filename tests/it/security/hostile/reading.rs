//! Reading what is not its own: wildcard subscriptions on others' traffic, and the admin's
//! token stored with a durable command.

use std::time::Duration;

use async_nats::HeaderMap;
use futures::{FutureExt, StreamExt};
use serde_json::json;
use tests::client::accepted;
use uuid::Uuid;

use super::{count, messages_in};
use crate::security::{Secured, violation};

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
    crate::transfers::open(app, "h-a", "EUR", 100).await;
    crate::transfers::open(app, "h-b", "EUR", 0).await;
    let reply = crate::transfers::request(app, Uuid::now_v7(), "h-a", "h-b", 60).await;
    let transfer = crate::transfers::settled(app, &reply).await;
    assert_eq!(transfer["status"], "completed");
    let (owner, _) = secured.connect("tally-client").await;
    let id = Uuid::now_v7();
    crate::security::publish_durable_as_admin(
        &owner,
        "tally.jobs.account.deposit",
        id,
        None,
        &json!({"account_id": "h-b", "amount": 1}),
    )
    .await;
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
