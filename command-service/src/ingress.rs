//! The request/reply front door: `<prefix>.cmd.<aggregate>.<command>` in queue group
//! `command-service`, one reply per request on its inbox.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use platform::nats::Subjects;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::executor::Executor;
use crate::handling;
use crate::incoming::{self, HEADER_COMMAND_ID};
use crate::schema_check::SchemaRegistry;

pub const QUEUE_GROUP: &str = "command-service";

#[derive(Debug, Clone)]
pub struct Ingress {
    pub nats: async_nats::Client,
    pub subjects: Subjects,
    pub executor: Arc<Executor>,
    pub schemas: Arc<SchemaRegistry>,
    pub access: Arc<crate::access::Access>,
    pub metrics: crate::metrics::CommandMetrics,
    pub in_flight: Arc<Semaphore>,
    /// The permits `in_flight` was made with: an atomic batch takes at most this many.
    pub in_flight_max: usize,
    pub deadline: Duration,
}

/// Subscribes before the service reports ready, so a started service never answers "no
/// responders".
pub async fn subscribe(
    nats: &async_nats::Client,
    subjects: &Subjects,
) -> Result<async_nats::Subscriber, async_nats::SubscribeError> {
    let subscription = nats
        .queue_subscribe(subjects.commands(), QUEUE_GROUP.to_owned())
        .await?;
    // `flush` only writes to the socket. The server handles a connection's operations in order,
    // so once a probe published after the SUB comes back, the SUB is registered.
    let inbox = nats.new_inbox();
    let mut probe = nats.subscribe(inbox.clone()).await?;
    let echoed = async {
        nats.publish(inbox, bytes::Bytes::new()).await.ok()?;
        probe.next().await
    };
    if tokio::time::timeout(Duration::from_secs(5), echoed)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        tracing::warn!("could not confirm the command subscription with the server");
    }
    Ok(subscription)
}

impl Ingress {
    /// Serves until `shutdown`; then stops taking requests, answers those already received and
    /// waits for in-flight commands.
    pub async fn run(self, mut subscription: async_nats::Subscriber, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        let mut draining = false;
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled(), if !draining => {
                    draining = true;
                    // Unsubscribes, but messages already delivered still arrive below.
                    if let Err(error) = subscription.drain().await {
                        tracing::warn!(%error, "draining the command subscription failed");
                        break;
                    }
                    continue;
                }
                message = subscription.next() => message,
            };
            let Some(message) = message else { break };
            let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else {
                break;
            };
            let this = self.clone();
            tasks.spawn(async move { this.handle(message, permit).await });
        }
        tasks.close();
        tasks.wait().await;
        tracing::info!("command ingress stopped");
    }

    /// Answers one request; `permit` is released once its command has finished (or at once
    /// when there is nothing to execute).
    async fn handle(&self, message: async_nats::Message, permit: OwnedSemaphorePermit) {
        let started = std::time::Instant::now();
        // Before anything is read or run: a reply goes only to an inbox. Any other "reply
        // subject" (an event, audit or result subject, the JetStream API) would make this
        // service publish there with its own rights, so the request is dropped unexecuted and
        // unanswered (there is nowhere safe to answer).
        if let Some(reply) = &message.reply
            && !platform::nats::is_inbox_subject(reply)
        {
            self.metrics.refused_reply_subjects.inc();
            tracing::warn!(
                subject = %message.subject,
                reply_len = reply.len(),
                "request dropped: its reply subject is not an inbox"
            );
            return;
        }
        let generated = Uuid::now_v7();
        let headers = message.headers.as_ref();
        if let Some((crate::batch::BATCH_AGGREGATE, crate::batch::BATCH_COMMAND)) =
            incoming::split_subject(&message.subject, self.subjects.prefix(), "cmd")
        {
            return self.handle_batch(message, generated, permit).await;
        }
        let reply = match incoming::command_id(headers, generated) {
            Err(rejection) => self
                .access
                .refuse_before_admission(headers, rejection)
                .into_reply(generated),
            Ok(command_id) => {
                let parsed = match incoming::split_subject(
                    &message.subject,
                    self.subjects.prefix(),
                    "cmd",
                ) {
                    None => Err(self.access.refuse_before_admission(
                        headers,
                        crate::rejection::Rejection::new(
                            domain::ErrorCode::UnknownCommand,
                            format!(
                                "`{}` is not a command subject (<prefix>.cmd.<aggregate>.<command>)",
                                message.subject
                            ),
                        ),
                    )),
                    Some((aggregate, name)) => crate::access::admit(
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
                    Err(rejection) => rejection.into_reply(command_id),
                    Ok(command) => {
                        handling::run(&self.executor, command, self.deadline, Some(permit))
                            .await
                            .reply
                    }
                }
            }
        };
        self.metrics.observe_subject(
            &message.subject,
            self.subjects.prefix(),
            "cmd",
            &self.schemas,
            &reply,
            started.elapsed(),
        );
        let Some(inbox) = message.reply else {
            return; // fire-and-forget publish: executed, nobody to tell
        };
        self.answer(inbox, reply.command_id(), handling::reply_bytes(&reply))
            .await;
    }

    async fn answer(&self, inbox: async_nats::Subject, command_id: Uuid, body: bytes::Bytes) {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_COMMAND_ID, command_id.to_string().as_str());
        if let Err(error) = self.nats.publish_with_headers(inbox, headers, body).await {
            tracing::warn!(%error, %command_id, "reply not sent");
        }
    }

    /// A batch: one reply listing each command's result, or one refusal of the whole batch
    /// (unauthenticated, throttled, malformed), answered as any command's refusal is.
    async fn handle_batch(
        &self,
        message: async_nats::Message,
        generated: Uuid,
        permit: OwnedSemaphorePermit,
    ) {
        let started = std::time::Instant::now();
        let headers = message.headers.as_ref();
        let batch_id = match incoming::command_id(headers, generated) {
            Ok(id) => id,
            Err(_) => generated,
        };
        let run = crate::batch::BatchRun {
            access: &self.access,
            schemas: &self.schemas,
            executor: &self.executor,
            deadline: self.deadline,
            in_flight: &self.in_flight,
            in_flight_max: self.in_flight_max,
        };
        let outcome = run.run(headers, &message.payload, permit).await;
        let body = match &outcome {
            Ok(reply) => serde_json::to_vec(reply)
                .map(bytes::Bytes::from)
                .unwrap_or_else(|error| {
                    tracing::error!(%error, "a batch reply did not serialise");
                    handling::reply_bytes(
                        &crate::rejection::Rejection::internal().into_reply(batch_id),
                    )
                }),
            Err(rejection) => handling::reply_bytes(&rejection.clone().into_reply(batch_id)),
        };
        let summary = match outcome {
            Ok(reply) => reply.results.into_iter().next_back(),
            Err(rejection) => Some(rejection.into_reply(batch_id)),
        };
        if let Some(reply) = summary {
            self.metrics.observe_subject(
                &message.subject,
                self.subjects.prefix(),
                "cmd",
                &self.schemas,
                &reply,
                started.elapsed(),
            );
        }
        if let Some(inbox) = message.reply {
            self.answer(inbox, batch_id, body).await;
        }
    }
}
