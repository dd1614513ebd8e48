//! Hostile reply subjects: a request naming a subject that is no inbox, to make the
//! command-service publish there with its own rights.

use std::time::Duration;

use async_nats::HeaderMap;
use domain::CommandReply;
use platform::auth::Scope;
use serde_json::json;
use tests::client::accepted;
use uuid::Uuid;

use platform::nats::StreamNames;

use super::{count, messages_in};
use crate::security::{Secured, token};

/// Reply subjects a request may name to make the command-service publish somewhere with its
/// own rights, for the subject prefix `prefix` and its streams.
fn hostile_reply_subjects(prefix: &str, streams: &StreamNames) -> Vec<String> {
    let events = &streams.events;
    vec![
        format!("{prefix}.evt.account.injected-x"),
        format!("{prefix}.audit.digest"),
        format!("{prefix}.results.{}", Uuid::now_v7()),
        format!("{prefix}.dlq.accounts"),
        format!("{prefix}.cmd.account.deposit"),
        format!("{prefix}.jobs.account.deposit"),
        format!("$JS.API.STREAM.PURGE.{events}"),
        format!("$JS.API.STREAM.DELETE.{events}"),
        format!("$JS.API.STREAM.MSG.DELETE.{events}"),
        format!("$JS.API.STREAM.PURGE.{}", streams.audit),
        format!("$JS.API.CONSUMER.DELETE.{events}.projection-accounts-p0"),
        format!("$JS.API.STREAM.UPDATE.{events}"),
        "_INBOX.>".to_owned(),
        "_INBOX.*".to_owned(),
    ]
}

/// `name`'s value on the command-service's `/metrics` (summed over its label sets).
async fn command_metric(app: &tests::TestApp, name: &str) -> f64 {
    let text = app
        .http
        .get(format!("http://{}/metrics", app.command_ops_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `name` (a counter) reaches `at_least`.
async fn wait_for_metric(app: &tests::TestApp, name: &str, at_least: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let counted = command_metric(app, name).await;
        if counted >= at_least {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} reached {counted}, not {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a deposit on `h-r` for each hostile reply subject, once with `token` and once with
/// none; returns the command ids.
async fn deposit_with_hostile_replies(
    attacker: &async_nats::Client,
    prefix: &str,
    replies: &[String],
    token: &str,
) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for reply in replies {
        for authorization in [Some(token), None] {
            let id = Uuid::now_v7();
            ids.push(id);
            let mut headers = HeaderMap::new();
            headers.insert("Tally-Command-Id", id.to_string().as_str());
            if let Some(t) = authorization {
                headers.insert("Authorization", format!("Bearer {t}").as_str());
            }
            attacker
                .publish_with_reply_and_headers(
                    format!("{prefix}.cmd.account.deposit"),
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
    ids
}

/// Messages in each of the app's streams, by name.
async fn stream_counts(js: &async_nats::jetstream::Context, streams: &StreamNames) -> Vec<u64> {
    let mut counts = Vec::new();
    for name in [&streams.events, &streams.audit, &streams.dead_letters] {
        let mut stream = js
            .get_stream(name)
            .await
            .unwrap_or_else(|e| panic!("stream {name} is gone: {e}"));
        counts.push(stream.info().await.unwrap().state.messages);
    }
    counts
}

async fn assert_consumers_intact(js: &async_nats::jetstream::Context, streams: &StreamNames) {
    let events = js.get_stream(&streams.events).await.unwrap();
    let partitions = 0..platform::nats::EVENT_PARTITIONS_DEFAULT;
    let consumers = projections::Projection::ALL
        .into_iter()
        .flat_map(|projection| {
            partitions
                .clone()
                .map(move |k| projections::lag::consumer_name(projection, k))
        });
    for consumer in consumers {
        events
            .consumer_info(&consumer)
            .await
            .unwrap_or_else(|e| panic!("consumer {consumer} is gone: {e}"));
    }
}

/// Where nothing but the code stands between a request's reply subject and the
/// command-service's rights (one NATS account, as on a development server without users): a
/// request whose reply subject is no inbox is dropped unexecuted.
#[tokio::test]
async fn replies_go_only_to_inboxes() {
    let app = tests::TestApp::spawn().await;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "h-r", "owner": "mallory", "currency": "EUR"}),
        )
        .await,
    );
    app.wait_for_stream_count(1, Duration::from_secs(10)).await;
    let streams_before = stream_counts(&app.jetstream, &app.streams).await;
    let stored_before = count(&app, "SELECT count(*) FROM events").await;
    let mallory = token(&[Scope::AccountsWrite], Some("mallory"));
    let prefix = app.subjects.prefix().to_owned();
    let replies = hostile_reply_subjects(&prefix, &app.streams);
    let ids = deposit_with_hostile_replies(&app.nats, &prefix, &replies, &mallory).await;
    // The marker: the command-service counted every one of them as refused.
    wait_for_metric(
        &app,
        "tally_command_reply_subjects_refused_total",
        ids.len() as f64,
    )
    .await;
    // Nothing ran, nothing was published anywhere, every stream and consumer is intact.
    let ran: i64 =
        sqlx::query_scalar("SELECT count(*) FROM command_log WHERE command_id = ANY($1)")
            .bind(&ids)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(ran, 0, "a request with a hostile reply subject ran");
    assert_eq!(
        count(&app, "SELECT count(*) FROM events").await,
        stored_before
    );
    assert_eq!(
        stream_counts(&app.jetstream, &app.streams).await,
        streams_before
    );
    assert_consumers_intact(&app.jetstream, &app.streams).await;
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

/// Under `deploy/nats-server.conf` a client's request reaches the command-service through a
/// service import: the server routes the answer back into the client's account, whatever
/// reply subject the client named, so no answer can land on a Tally subject.
#[tokio::test]
async fn across_accounts_no_answer_lands_on_a_tally_subject() {
    let secured = Secured::start().await;
    let app = &secured.app;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "h-r", "owner": "mallory", "currency": "EUR"}),
        )
        .await,
    );
    let (service, _) = secured.connect("command-service").await;
    let js = async_nats::jetstream::new(service);
    let streams = StreamNames::for_subjects(&app.subjects);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stream_counts(&js, &streams).await[0] == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the opening never reached the stream"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let before = stream_counts(&js, &streams).await;
    let (attacker, _) = secured.connect("tally-client").await;
    let mallory = token(&[Scope::AccountsWrite], Some("mallory"));
    let replies = hostile_reply_subjects("tally", &streams);
    let ids = deposit_with_hostile_replies(&attacker, "tally", &replies, &mallory).await;
    // The marker: every one was answered (accepted with the token, refused without).
    let ran = |ids: Vec<Uuid>| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM command_log WHERE command_id = ANY($1)")
            .bind(&ids)
            .fetch_one(&app.db)
            .await
            .unwrap()
    };
    wait_for_metric(
        app,
        "tally_commands_total{aggregate=\"account\",command=\"deposit\",outcome=\"unauthenticated\"}",
        replies.len() as f64,
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while ran(ids.clone()).await < replies.len() as i64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the deposits never ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The deposits' own events are the only new messages; nothing else reached a stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let expected_events = before[0] + replies.len() as u64;
    while stream_counts(&js, &streams).await[0] < expected_events {
        assert!(
            std::time::Instant::now() < deadline,
            "the deposits never reached the stream"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        stream_counts(&js, &streams).await,
        vec![expected_events, before[1], before[2]],
        "an answer landed on a stream"
    );
    let (projections, _) = secured.connect("projections").await;
    assert_consumers_intact(&async_nats::jetstream::new(projections), &streams).await;
}

/// The durable door: a publish to `tally.jobs.…` is answered by JetStream itself (its ack),
/// which has every right there is. Whatever reply subject the client names, the ack must not
/// land on a Tally subject, and nothing is run or recorded for a sender without a token.
#[tokio::test]
async fn a_durable_publish_cannot_aim_its_ack_at_a_tally_subject() {
    let secured = Secured::start().await;
    let app = &secured.app;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "h-j", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while messages_in(&secured, "TALLY_EVENTS").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the opening never reached the stream"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let events_before = messages_in(&secured, "TALLY_EVENTS").await;
    let audit_before = messages_in(&secured, "TALLY_AUDIT").await;
    let logged_before = count(app, "SELECT count(*) FROM command_log").await;
    let (attacker, _) = secured.connect("tally-client").await;
    let replies =
        hostile_reply_subjects("tally", &StreamNames::for_subjects(&secured.app.subjects));
    for reply in &replies {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", Uuid::now_v7().to_string().as_str());
        attacker
            .publish_with_reply_and_headers(
                "tally.jobs.account.deposit",
                reply.clone(),
                headers,
                serde_json::to_vec(&json!({"account_id": "h-j", "amount": 7}))
                    .unwrap()
                    .into(),
            )
            .await
            .unwrap();
    }
    // Refusals found before the sender is known leave no trace either: a subject naming no
    // command, a malformed command id (it would burn that id for everyone).
    for (subject, command_id) in [
        ("tally.jobs.x.y.z", Uuid::now_v7().to_string()),
        ("tally.jobs.account.nope", Uuid::now_v7().to_string()),
        ("tally.jobs.account.deposit", "not-a-uuid".to_owned()),
    ] {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", Uuid::now_v7().to_string().as_str());
        headers.insert("Tally-Command-Id", command_id.as_str());
        async_nats::jetstream::new(attacker.clone())
            .publish_with_headers(subject, headers, "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    attacker.flush().await.unwrap();
    // The marker: an honest durable command stored after them has its result, so every
    // earlier message was stored (and acknowledged) before it.
    let inbox = attacker.new_inbox();
    let mut result = attacker.subscribe(inbox.clone()).await.unwrap();
    crate::security::publish_durable_as_admin(
        &attacker,
        "tally.jobs.account.deposit",
        Uuid::now_v7(),
        Some(&inbox),
        &json!({"account_id": "h-j", "amount": 1}),
    )
    .await;
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        futures::StreamExt::next(&mut result),
    )
    .await
    .expect("the honest durable command's result")
    .unwrap();
    let answer: CommandReply = serde_json::from_slice(&answer.payload).unwrap();
    accepted(&answer);
    // Lanes run in parallel, so also wait until every refusal was answered.
    wait_for_metric(
        app,
        "tally_commands_total{aggregate=\"unknown\",command=\"unknown\",outcome=\"unauthenticated\"}",
        2.0,
    )
    .await;
    wait_for_metric(
        app,
        "tally_commands_total{aggregate=\"account\",command=\"deposit\",outcome=\"unauthenticated\"}",
        (replies.len() + 1) as f64,
    )
    .await;
    // The honest command's event reaches the stream through the relay, after its reply: wait
    // for it, then nothing more may be there.
    crate::dead_letters::eventually("the honest command's event is relayed", async || {
        messages_in(&secured, "TALLY_EVENTS").await > events_before
    })
    .await;
    assert_eq!(
        messages_in(&secured, "TALLY_EVENTS").await,
        events_before + 1,
        "a publish ack landed on the events stream"
    );
    assert_eq!(
        messages_in(&secured, "TALLY_AUDIT").await,
        audit_before,
        "a publish ack landed on the audit stream"
    );
    assert_eq!(messages_in(&secured, "TALLY_DLQ").await, 0);
    assert_eq!(
        count(app, "SELECT count(*) FROM command_log").await,
        logged_before + 1,
        "a durable command without a valid token was recorded"
    );
}
