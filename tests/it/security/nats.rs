//! NATS users and subject permissions (`deploy/nats-server.conf`): the whole stack runs with
//! each service as its own user, a client may only send commands and read its replies, and
//! nobody connects without credentials.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use super::{Secured, violation};

#[tokio::test]
async fn each_service_as_its_own_user_and_clients_only_send_commands() {
    let secured = Secured::start().await;
    let app = &secured.app;
    let access = secured.access.clone();

    // The whole flow works under these permissions: commands, the relay, both projections, the
    // process manager, reads.
    super::super::transfers::open(app, "n-a", "EUR", 100).await;
    super::super::transfers::open(app, "n-b", "EUR", 0).await;
    let reply = super::super::transfers::request(app, Uuid::now_v7(), "n-a", "n-b", 60).await;
    let transfer = super::super::transfers::settled(app, &reply).await;
    assert_eq!(transfer["status"], "completed");
    for addr in [
        app.command_ops_addr,
        app.projections_ops_addr,
        app.process_manager_ops_addr,
    ] {
        let ready = app
            .http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "{addr}");
    }
    // A durable command from a client: stored, run, its result delivered.
    let (client, mut errors) = secured.connect("tally-client").await;
    let id = Uuid::now_v7();
    let inbox = client.new_inbox();
    let mut results = client.subscribe(inbox.clone()).await.unwrap();
    super::publish_durable_as_admin(
        &client,
        "tally.jobs.account.deposit",
        id,
        Some(&inbox),
        &json!({"account_id": "n-b", "amount": 1}),
    )
    .await;
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut results),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(String::from_utf8_lossy(&result.payload).contains("accepted"));

    // A client cannot forge events, read them, or take other services' commands.
    client
        .publish("tally.evt.account.n-a", "forged".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let error = violation(&mut errors).await;
    assert!(
        error.contains("permissions violation") && error.contains("publish"),
        "{error}"
    );
    for subject in [
        "tally.evt.>",
        "tally.cmd.>",
        "tally.dlq.>",
        "tally.results.>",
    ] {
        let _ = client.subscribe(subject.to_owned()).await;
        let error = violation(&mut errors).await;
        assert!(
            error.contains("permissions violation") && error.contains("subscription"),
            "{subject}: {error}"
        );
    }
    // Nor create streams or consumers of its own.
    let js = async_nats::jetstream::new(client.clone());
    assert!(
        tokio::time::timeout(Duration::from_secs(5), js.get_stream("TALLY_EVENTS"))
            .await
            .map_or(true, |r| r.is_err()),
        "a client reached the JetStream API"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let (service, _) = secured.connect("query-service").await;
    let mut events = async_nats::jetstream::new(service)
        .get_stream("TALLY_EVENTS")
        .await
        .unwrap();
    let in_stream = events.info().await.unwrap().state.messages;
    assert_eq!(
        in_stream as i64, stored,
        "a forged event reached the stream"
    );

    // Without credentials, or with wrong ones, nobody connects.
    assert!(async_nats::connect(access.url.as_str()).await.is_err());
    assert!(
        async_nats::ConnectOptions::with_user_and_password("tally-client".into(), "guess".into())
            .connect(access.url.as_str())
            .await
            .is_err()
    );
}
