//! The durable front door: `<prefix>.jobs.<aggregate>.<command>` is captured by the commands
//! stream (deduplicated by `Nats-Msg-Id`) and consumed here by a durable pull consumer, so a
//! command published while the service is down runs when it comes back. Each result goes to
//! the command log and to `<prefix>.results.<command_id>`.
//!
//! Order: durable commands on one aggregate run in the order they were published. The consumer
//! uses a pinned priority group, so one instance at a time receives them (another takes over
//! when it stops pulling), and inside that instance each aggregate has one lane that runs its
//! commands one after another; different aggregates run in parallel.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use platform::nats::{StreamNames, Subjects};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::executor::{self, Executor};
use crate::handling;
use crate::incoming::{self, HEADER_COMMAND_ID};
use crate::rejection::Rejection;
use crate::schema_check::SchemaRegistry;

pub const CONSUMER: &str = "command-service";
/// A delivery not acknowledged within this is redelivered (commands finish far sooner).
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Messages pulled per request.
const PULL_BATCH_MAX: usize = 64;
/// Parallel lanes; an aggregate always maps to the same lane.
const LANES: usize = 16;
/// Messages waiting per lane before the puller waits (backpressure).
const LANE_QUEUE_MAX: usize = 64;
/// The priority group the instances pull with; one is pinned at a time.
const PRIORITY_GROUP: &str = "jobs";
/// How long the pinned instance may stop pulling before another takes over.
const PIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Jobs {
    pub nats: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub subjects: Subjects,
    pub streams: StreamNames,
    pub executor: Arc<Executor>,
    pub schemas: Arc<SchemaRegistry>,
    pub access: Arc<crate::access::Access>,
    pub metrics: crate::metrics::CommandMetrics,
    pub in_flight: Arc<Semaphore>,
    pub deadline: Duration,
    pub max_deliver: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("cannot set up the durable command consumer: {0}")]
    Consumer(String),
}

impl Jobs {
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), JobsError> {
        let stream = self
            .jetstream
            .get_stream(&self.streams.commands)
            .await
            .map_err(|e| JobsError::Consumer(e.to_string()))?;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(CONSUMER.to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_deliver: self.max_deliver,
                max_ack_pending: i64::try_from(LANES * LANE_QUEUE_MAX).unwrap_or(1024),
                priority_policy: jetstream::consumer::PriorityPolicy::PinnedClient,
                priority_groups: vec![PRIORITY_GROUP.to_owned()],
                priority_timeout: PIN_TIMEOUT,
                ..Default::default()
            })
            .await
            .map_err(|e| JobsError::Consumer(e.to_string()))?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH_MAX)
            .expires(Duration::from_secs(2))
            .group(PRIORITY_GROUP)
            .messages()
            .await
            .map_err(|e| JobsError::Consumer(e.to_string()))?;
        let tasks = TaskTracker::new();
        let mut lanes = Vec::with_capacity(LANES);
        for _ in 0..LANES {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<jetstream::Message>(LANE_QUEUE_MAX);
            let this = self.clone();
            tasks.spawn(async move {
                while let Some(message) = rx.recv().await {
                    let Ok(permit) = Arc::clone(&this.in_flight).acquire_owned().await else {
                        break;
                    };
                    this.handle(message).await;
                    drop(permit);
                }
            });
            lanes.push(tx);
        }
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => break,
                next = messages.next() => next,
            };
            let Some(next) = next else { break };
            let message = match next {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "durable command consumer error");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let lane = lane_of(&message.payload);
            if lanes[lane].send(message).await.is_err() {
                break;
            }
        }
        // Stop pulling, then let each lane finish what it holds.
        drop(messages);
        drop(lanes);
        // Unacknowledged messages are redelivered after ACK_WAIT to whichever instance runs.
        tasks.close();
        tasks.wait().await;
        // Hand the pin over now rather than after PIN_TIMEOUT, so a successor starts at once.
        if let Err(error) = stream.unpin_consumer(CONSUMER, PRIORITY_GROUP).await {
            tracing::debug!(%error, "unpin on shutdown failed; the pin expires by itself");
        }
        tracing::info!("durable command consumer stopped");
        Ok(())
    }

    async fn handle(&self, message: jetstream::Message) {
        let started = std::time::Instant::now();
        let (stream_sequence, delivered) = message
            .info()
            .map(|i| (i.stream_sequence, i.delivered))
            .unwrap_or((0, 1));
        let fallback = executor::derived_command_id(&self.streams.commands, stream_sequence);
        let (reply, target, transient) =
            match incoming::command_id(message.headers.as_ref(), fallback) {
                Err(rejection) => (
                    rejection.into_reply(fallback),
                    (
                        aggregate_type_of(&message.subject, self.subjects.prefix()),
                        String::new(),
                    ),
                    false,
                ),
                Ok(command_id) => {
                    let parsed = match incoming::split_subject(
                        &message.subject,
                        self.subjects.prefix(),
                        "jobs",
                    ) {
                        None => Err(Rejection::new(
                            domain::ErrorCode::UnknownCommand,
                            format!("`{}` is not a durable command subject", message.subject),
                        )),
                        Some((aggregate, name)) => incoming::admit(
                            &self.access,
                            command_id,
                            aggregate,
                            name,
                            message.headers.as_ref(),
                            &message.payload,
                            &self.schemas,
                        ),
                    };
                    match parsed {
                        Err(rejection) => {
                            // Over the sender's rate: tried again later, like an outage.
                            let transient = rejection.code == domain::ErrorCode::RateLimited;
                            (
                                rejection.into_reply(command_id),
                                (
                                    aggregate_type_of(&message.subject, self.subjects.prefix()),
                                    String::new(),
                                ),
                                transient,
                            )
                        }
                        Ok(command) => {
                            let target = (command.aggregate_type(), command.aggregate_id());
                            let outcome =
                                handling::run(&self.executor, command, self.deadline).await;
                            (outcome.reply, target, outcome.transient)
                        }
                    }
                }
            };
        self.metrics.observe_subject(
            &message.subject,
            self.subjects.prefix(),
            "jobs",
            &self.schemas,
            &reply,
            started.elapsed(),
        );
        if transient && delivered < self.max_deliver {
            // Try again later (PostgreSQL down, timeout); the command has not run.
            let delay = Duration::from_millis(500 * u64::try_from(delivered.min(10)).unwrap_or(1));
            if let Err(error) = message.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::warn!(%error, "nak failed; the command is redelivered after the ack wait");
            }
            return;
        }
        let command_id = reply.command_id();
        // Rejections that never reached the executor are recorded here, so the result of every
        // durable command is readable later; refusals of the sender write nothing.
        let recordable = match &reply {
            domain::CommandReply::Rejected { error, .. } => {
                !crate::access::is_access_refusal(error.code)
            }
            domain::CommandReply::Accepted { .. } => false,
        };
        if recordable
            && let Err(error) = self
                .executor
                .repository()
                .log_rejection(command_id, target.0, &target.1, &reply)
                .await
        {
            tracing::warn!(%error, %command_id, "rejection of a durable command not recorded; retrying later");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_COMMAND_ID, command_id.to_string().as_str());
        if let Err(error) = self
            .nats
            .publish_with_headers(
                self.subjects.result(&command_id.to_string()),
                headers,
                handling::reply_bytes(&reply),
            )
            .await
        {
            tracing::warn!(%error, %command_id, "result announcement not sent (the command log has it)");
        }
        if let Err(error) = message.double_ack().await {
            tracing::warn!(%error, %command_id, "ack failed; a redelivery will get the logged result");
        }
    }
}

/// The lane of a command: by its `account_id`, so one aggregate's commands stay in order.
fn lane_of(payload: &[u8]) -> usize {
    #[derive(serde::Deserialize)]
    struct Target {
        account_id: Option<String>,
    }
    let key = serde_json::from_slice::<Target>(payload)
        .ok()
        .and_then(|t| t.account_id)
        .unwrap_or_default();
    // FNV-1a: stable and cheap; the lane only has to be the same for the same id.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    usize::try_from(hash % LANES as u64).unwrap_or(0)
}

/// The aggregate type a durable subject names, for recording a rejection that never parsed.
fn aggregate_type_of(subject: &str, prefix: &str) -> &'static str {
    match incoming::split_subject(subject, prefix, "jobs") {
        Some(("transfer", _)) => "transfer",
        _ => "account",
    }
}

#[cfg(test)]
mod tests {
    use super::lane_of;

    #[test]
    fn one_account_one_lane() {
        let a = lane_of(br#"{"account_id":"acc-1","amount":5}"#);
        assert_eq!(a, lane_of(br#"{"amount":7,"account_id":"acc-1"}"#));
        assert!(a < super::LANES);
        assert_eq!(lane_of(b"not json"), lane_of(b"{}"));
    }
}
