//! The streams themselves: none can be purged or have a message erased, and a message on the
//! events stream that is no event cannot hold a projection up.

use std::time::Duration;

use domain::CommandReply;
use serde_json::json;
use tests::client::accepted;

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
    // Every partition's consumer of the accounts projection holds nothing unacknowledged: the
    // acks follow the commits, so this waits (bounded) for the last of them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut pending = 0;
        for k in 0..platform::nats::EVENT_PARTITIONS_DEFAULT {
            let name = projections::lag::consumer_name(projections::Projection::Accounts, k);
            pending += events.consumer_info(&name).await.unwrap().num_ack_pending;
        }
        if pending == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pending} deliveries still unacknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        dead_letters.info().await.unwrap().state.messages,
        1,
        "dead-lettered more than once"
    );
}

#[tokio::test]
async fn the_commands_stream_refuses_what_exceeds_its_limits() {
    let app = tests::TestApp::spawn().await;
    let too_big = vec![b'x'; platform::nats::COMMAND_MESSAGE_MAX_BYTES as usize + 1];
    let stored = app
        .jetstream
        .publish(
            format!("{}.jobs.account.deposit", app.subjects.prefix()),
            too_big.into(),
        )
        .await
        .unwrap()
        .await;
    assert!(stored.is_err(), "an oversized durable command was stored");
    let mut stream = app
        .jetstream
        .get_stream(&app.streams.commands)
        .await
        .unwrap();
    let config = &stream.info().await.unwrap().config;
    assert_eq!(config.max_messages, platform::nats::COMMANDS_QUEUED_MAX);
    assert_eq!(
        config.discard,
        async_nats::jetstream::stream::DiscardPolicy::New
    );
}

#[tokio::test]
async fn only_the_command_service_changes_a_streams_settings() {
    // E.g. a republish of the commands stream (tokens included) to an inbox of one's own, or
    // limits that would age the events stream out.
    let mut secured = crate::security::Secured::start().await;
    for user in [
        "tally-client",
        "tally-operator",
        "projections",
        "process-manager",
        "query-service",
    ] {
        let (connection, mut errors) = secured.connect(user).await;
        for subject in [
            "$JS.API.STREAM.UPDATE.TALLY_COMMANDS",
            "$JS.API.STREAM.UPDATE.TALLY_EVENTS",
            "$JS.API.STREAM.CREATE.SPY",
        ] {
            connection
                .publish_with_reply(
                    subject,
                    format!("_INBOX_{user}.x.y"),
                    r#"{"name":"TALLY_COMMANDS","subjects":["tally.jobs.>"],"republish":{"src":">","dest":"_INBOX_spy.>"}}"#.into(),
                )
                .await
                .unwrap();
            connection.flush().await.unwrap();
            let error = crate::security::violation(&mut errors).await;
            assert!(
                error.contains("permissions violation") && error.contains("publish"),
                "{user} may publish on {subject}: {error:?}"
            );
        }
    }
    let (service, _) = secured.connect("command-service").await;
    let mut commands = async_nats::jetstream::new(service)
        .get_stream("TALLY_COMMANDS")
        .await
        .unwrap();
    assert!(commands.info().await.unwrap().config.republish.is_none());
    // Every service started under these rights, and a restart finds the streams as they are.
    secured.app.stop_projections().await;
    secured.app.start_projections().await;
}
