//! The consumer loop: a durable pull consumer on `<prefix>.evt.transfer.>`, each event handled
//! on its own task (bounded), acknowledged only after the command that records the step's
//! outcome was answered. Anything else (no reply, a transient refusal) naks the event to come
//! back later: the commands it sends are idempotent by id, so trying again is always safe.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use domain::envelope::{self, EventMessage};
use domain::{CommandReply, ErrorCode};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::command_client::{Cause, CommandClient};
use crate::reactions::{self, Reaction, Send};

pub const CONSUMER: &str = "process-manager";
/// An event not acknowledged within this comes back (a step takes two round trips).
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Longest pause before an event whose step could not be made yet is offered again.
const RETRY_DELAY_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Worker {
    pub jetstream: jetstream::Context,
    pub events_stream: String,
    pub filter_subject: String,
    pub commands: CommandClient,
    /// Derives the command ids of the steps (keyed: nobody else can use them first).
    pub ids: reactions::StepIds,
    pub in_flight_max: usize,
}

/// Why an event was not finished now; it comes back later.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("{command} was not answered: {source}")]
    Unanswered {
        command: &'static str,
        #[source]
        source: crate::command_client::SendError,
    },
    #[error("{command} was refused for now ({code:?}): {message}")]
    NotYet {
        command: &'static str,
        code: ErrorCode,
        message: String,
    },
}

impl Worker {
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), String> {
        let consumer = self
            .jetstream
            .get_stream(&self.events_stream)
            .await
            .map_err(|e| e.to_string())?
            .create_consumer(pull::Config {
                durable_name: Some(CONSUMER.to_owned()),
                filter_subject: self.filter_subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: i64::try_from(self.in_flight_max * 4).unwrap_or(1_000),
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(self.in_flight_max)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        let permits = Arc::new(Semaphore::new(self.in_flight_max.max(1)));
        let tasks = TaskTracker::new();
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => break,
                next = messages.next() => next,
            };
            let message = match next {
                None => break,
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::warn!(%error, "pull failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break;
            };
            let this = self.clone();
            tasks.spawn(async move {
                this.handle(message).await;
                drop(permit);
            });
        }
        // Stop pulling; the events already taken are finished (or come back after the ack
        // wait if the process dies first).
        drop(messages);
        tasks.close();
        tasks.wait().await;
        tracing::info!("process manager stopped");
        Ok(())
    }

    async fn handle(&self, message: jetstream::Message) {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        let event: EventMessage = match serde_json::from_slice(&message.payload) {
            Ok(event) => event,
            Err(error) => {
                // Not ours to fix, and never going to parse: a redelivery would spin.
                tracing::error!(%error, subject = %message.subject, "unreadable event; skipped");
                ack(&message).await;
                return;
            }
        };
        let span = tracing::info_span!(
            "transfer_step",
            transfer_id = %event.aggregate_id,
            event = %event.event_type,
            sequence = event.sequence,
            trace_id = event.metadata.get("trace_id").and_then(|v| v.as_str()).unwrap_or(""),
        );
        platform::telemetry::continue_trace(
            &span,
            event.metadata.get("traceparent").and_then(|v| v.as_str()),
        );
        let outcome = tracing::Instrument::instrument(self.react(&event), span).await;
        match outcome {
            Ok(()) => ack(&message).await,
            Err(error) => {
                let delay = (Duration::from_millis(200)
                    * 2u32.saturating_pow(u32::try_from(delivered.clamp(1, 7) - 1).unwrap_or(6)))
                .min(RETRY_DELAY_MAX);
                tracing::warn!(error = %error, transfer_id = %event.aggregate_id, event = %event.event_type, retry_in_ms = delay.as_millis() as u64, "transfer step not finished; trying again later");
                if let Err(error) = message.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::debug!(%error, "nak failed; the event comes back after the ack wait");
                }
            }
        }
    }

    async fn react(&self, event: &EventMessage) -> Result<(), StepError> {
        let reaction = match reactions::react(event, &self.ids) {
            Ok(reaction) => reaction,
            Err(error) => {
                tracing::error!(%error, "event cannot drive a transfer; skipped");
                return Ok(());
            }
        };
        let Reaction::Step {
            transfer_id,
            step,
            then,
            fail_command_id,
        } = reaction
        else {
            return Ok(());
        };
        let cause = Cause {
            correlation_id: transfer_id,
            causation_id: envelope::event_id(
                &event.aggregate_type,
                &event.aggregate_id,
                event.sequence,
            ),
            traceparent: event
                .metadata
                .get("traceparent")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
        };
        let next = match self.send(&step, &cause).await? {
            CommandReply::Accepted { .. } => then,
            CommandReply::Rejected { error, .. } => match fail_command_id {
                Some(id) if reactions::refusal_is_final(error.code) => {
                    tracing::info!(code = ?error.code, "account refused the step; the transfer fails");
                    reactions::fail(transfer_id, id, error.code, &error.message)
                }
                _ => {
                    return Err(StepError::NotYet {
                        command: step.command,
                        code: error.code,
                        message: error.message,
                    });
                }
            },
        };
        match self.send(&next, &cause).await? {
            CommandReply::Accepted { .. } => Ok(()),
            CommandReply::Rejected { error, .. } => Err(StepError::NotYet {
                command: next.command,
                code: error.code,
                message: error.message,
            }),
        }
    }

    async fn send(&self, command: &Send, cause: &Cause) -> Result<CommandReply, StepError> {
        self.commands
            .send(command, cause)
            .await
            .map_err(|source| StepError::Unanswered {
                command: command.command,
                source,
            })
    }
}

async fn ack(message: &jetstream::Message) {
    if let Err(error) = message.ack().await {
        tracing::debug!(%error, "ack failed; the event comes back and its commands repeat harmlessly");
    }
}
