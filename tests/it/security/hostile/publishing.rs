//! Publishing where a client may not: events, audit, results, dead letters, other users'
//! inboxes and the JetStream API.

use super::messages_in;
use crate::security::{Secured, violation};

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
    "$JS.API.CONSUMER.DELETE.TALLY_EVENTS.projection-accounts-p0",
    "$JS.ACK.TALLY_COMMANDS.command-service.1.1.1.1.0",
];

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
