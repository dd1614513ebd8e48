//! What a user of Tally does over NATS, as test helpers: send commands, read the events stream.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use domain::CommandReply;
use domain::envelope::EventMessage;

use crate::app::TestApp;

/// One message of the events stream, as stored.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub stream_sequence: u64,
    pub msg_id: String,
    pub message: EventMessage,
}

impl TestApp {
    /// Sends `body` to `<prefix>.cmd.<command>` (e.g. `account.deposit`) and returns the reply.
    pub async fn send(&self, command: &str, body: serde_json::Value) -> CommandReply {
        self.send_raw(
            command,
            HeaderMap::new(),
            serde_json::to_vec(&body).unwrap(),
        )
        .await
    }

    /// Sends with a chosen command id.
    pub async fn send_with_id(
        &self,
        command: &str,
        command_id: uuid::Uuid,
        body: serde_json::Value,
    ) -> CommandReply {
        let mut headers = HeaderMap::new();
        headers.insert("Tally-Command-Id", command_id.to_string().as_str());
        self.send_raw(command, headers, serde_json::to_vec(&body).unwrap())
            .await
    }

    /// Sends raw bytes with headers (and the admin token, unless `Authorization` is among
    /// them); panics if no reply arrives within 15 s.
    pub async fn send_raw(
        &self,
        command: &str,
        mut headers: HeaderMap,
        body: Vec<u8>,
    ) -> CommandReply {
        if headers.get("Authorization").is_none() {
            headers.insert(
                "Authorization",
                format!("Bearer {}", crate::app::admin_token()).as_str(),
            );
        }
        let subject = format!("{}.cmd.{command}", self.subjects.prefix());
        let response = tokio::time::timeout(
            Duration::from_secs(15),
            self.nats
                .request_with_headers(subject.clone(), headers, body.into()),
        )
        .await
        .unwrap_or_else(|_| panic!("no reply to {subject} within 15 s"))
        .unwrap_or_else(|e| panic!("request to {subject} failed: {e}"));
        serde_json::from_slice(&response.payload).unwrap_or_else(|e| {
            panic!(
                "reply is not a CommandReply ({e}): {}",
                String::from_utf8_lossy(&response.payload)
            )
        })
    }

    /// Rows in the `events` table.
    pub async fn events_in_store(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// Messages in the events stream right now.
    pub async fn events_in_stream_count(&self) -> u64 {
        let mut stream = self
            .jetstream
            .get_stream(&self.streams.events)
            .await
            .unwrap();
        stream.info().await.unwrap().state.messages
    }

    /// Every message of the events stream, in stream order.
    pub async fn events_in_stream(&self) -> Vec<StoredEvent> {
        let mut stream = self
            .jetstream
            .get_stream(&self.streams.events)
            .await
            .unwrap();
        let state = stream.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        for seq in state.first_sequence..=state.last_sequence {
            if seq == 0 {
                continue;
            }
            let Ok(raw) = stream.get_raw_message(seq).await else {
                continue;
            };
            let msg_id = raw
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            out.push(StoredEvent {
                stream_sequence: seq,
                msg_id,
                message: serde_json::from_slice(&raw.payload).unwrap(),
            });
        }
        out
    }

    /// Waits until the events stream holds `count` messages (panics after `timeout`).
    pub async fn wait_for_stream_count(&self, count: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.events_in_stream_count().await;
            if now >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "events stream has {now} messages, expected {count}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl TestApp {
    /// The projections' figures, as `/metrics` reports them.
    pub async fn projection_figures(&self) -> Vec<projections::figures::ProjectionFigures> {
        projections::figures::read(&self.db).await.unwrap()
    }

    /// Gap safety: no projection ever jumped over an event.
    pub async fn assert_no_skipped_events(&self) {
        for figures in self.projection_figures().await {
            assert_eq!(figures.events_skipped, 0, "events skipped: {figures:?}");
        }
    }
}

/// `accepted` or panic with the rejection.
pub fn accepted(reply: &CommandReply) -> (String, u64) {
    match reply {
        CommandReply::Accepted {
            aggregate_id,
            version,
            ..
        } => (aggregate_id.clone(), *version),
        CommandReply::Rejected { error, .. } => {
            panic!("rejected: {} {}", error.code, error.message)
        }
    }
}

/// The error code of a rejection, or panic.
/// The rejection's code, or `None` when accepted.
pub fn rejected_code_if_any(reply: &CommandReply) -> Option<domain::ErrorCode> {
    match reply {
        CommandReply::Accepted { .. } => None,
        CommandReply::Rejected { error, .. } => Some(error.code),
    }
}

pub fn rejected_code(reply: &CommandReply) -> domain::ErrorCode {
    match reply {
        CommandReply::Rejected { error, .. } => error.code,
        CommandReply::Accepted { .. } => panic!("accepted, expected a rejection: {reply:?}"),
    }
}
