//! Deciding one durable command: a durable command is tried, in place, until it gets an answer.
//! Admission happens once; the executor runs it again through outages and over-rate refusals
//! (which are not answers), and through internal errors only within the delivery budget; a
//! message whose earlier deliveries all died is answered without being run again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use domain::{CommandReply, ErrorCode};
use tokio_util::sync::CancellationToken;

use super::Jobs;
use super::answering::Answer;
use super::waiting::{Backoff, Cause, RETRY_FIRST};
use crate::executor;
use crate::handling;
use crate::incoming::{self, IncomingCommand};
use crate::rejection::Rejection;

/// What became of the message a lane handled.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Handled {
    /// Answered (result recorded and published) and acknowledged; or, for a message that is
    /// not a JetStream delivery (no stream sequence), terminated unrun.
    Answered,
    /// Shutdown came while it waited: neither answered nor acknowledged.
    Abandoned,
}

impl Jobs {
    /// Decides one durable command (trying it again in place until it gets an answer), records
    /// and publishes the answer, and acknowledges the message.
    pub(super) async fn handle(
        &self,
        lane: usize,
        message: &jetstream::Message,
        shutdown: &CancellationToken,
    ) -> Handled {
        let started = Instant::now();
        // A consumer's message always names its stream sequence (in its ack subject): the
        // derived command id is built from it, so a message without one is not run.
        let Ok((stream_sequence, delivered)) =
            message.info().map(|i| (i.stream_sequence, i.delivered))
        else {
            tracing::error!(subject = %message.subject, "a durable command without JetStream metadata; not run");
            if let Err(error) = message.ack_with(AckKind::Term).await {
                tracing::warn!(%error, "terminating a message without metadata failed");
            }
            return Handled::Answered;
        };
        let authorization = message
            .headers
            .as_ref()
            .and_then(|h| h.get(crate::access::HEADER_AUTHORIZATION))
            .map_or("", |v| v.as_str());
        let fallback = executor::derived_command_id(
            &self.streams.commands,
            stream_sequence,
            &message.payload,
            authorization,
        );
        tracing::debug!(lane, stream_sequence, delivered, "durable command");
        let mut backoff = Backoff::new(self.retry_max);
        let Some(answer) = self
            .decide(lane, message, delivered, fallback, &mut backoff, shutdown)
            .await
        else {
            return Handled::Abandoned;
        };
        self.metrics.observe_subject(
            &message.subject,
            self.subjects.prefix(),
            "jobs",
            &self.schemas,
            &answer.reply,
            started.elapsed(),
        );
        self.answer(lane, message, &answer, &mut backoff, shutdown)
            .await
    }

    /// The answer to the command in `message`, on its `delivered`-th delivery; `None`:
    /// shutdown came while it waited.
    async fn decide(
        &self,
        lane: usize,
        message: &jetstream::Message,
        delivered: i64,
        fallback: uuid::Uuid,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Option<Answer> {
        let unparsed_target = || {
            (
                aggregate_type_of(&message.subject, self.subjects.prefix()),
                String::new(),
            )
        };
        if delivered > self.max_deliver {
            // Each earlier delivery ended with no answer at all: running it again is what
            // killed or stalled the process. Answer it without running it.
            let command_id =
                incoming::command_id(message.headers.as_ref(), fallback).unwrap_or(fallback);
            tracing::error!(%command_id, delivered, "durable command given up: no delivery of it ever ended");
            let rejection = Rejection::new(
                ErrorCode::Internal,
                format!(
                    "given up after {} deliveries that ended without an answer; the service log has the details",
                    delivered - 1
                ),
            );
            return Some(Answer {
                reply: rejection.into_reply(command_id),
                target: unparsed_target(),
                decided: false,
            });
        }
        match self
            .admit_within_rate(lane, message, fallback, shutdown)
            .await?
        {
            Err((rejection, command_id)) => Some(Answer {
                reply: rejection.into_reply(command_id),
                target: unparsed_target(),
                decided: false,
            }),
            Ok(command) => {
                let (reply, target) = self
                    .execute(lane, command, delivered, backoff, shutdown)
                    .await?;
                Some(Answer {
                    reply,
                    target,
                    decided: true,
                })
            }
        }
    }

    /// Admission once: a command admitted keeps its admission while it waits, even if its
    /// token expires meanwhile. While the sender is over its rate this waits rather than
    /// refuses (the queue is its throttle); `None`: shutdown came while it waited.
    async fn admit_within_rate(
        &self,
        lane: usize,
        message: &jetstream::Message,
        fallback: uuid::Uuid,
        shutdown: &CancellationToken,
    ) -> Option<Result<IncomingCommand, (Rejection, uuid::Uuid)>> {
        loop {
            match self.admit(message, fallback) {
                Err((rejection, command_id)) if rejection.code == ErrorCode::RateLimited => {
                    let asked = rejection
                        .details
                        .get("retry_after_ms")
                        .and_then(serde_json::Value::as_u64)
                        .map_or(RETRY_FIRST, Duration::from_millis);
                    tracing::debug!(%command_id, "durable command over its sender's rate; waiting");
                    let pause = asked.clamp(RETRY_FIRST, self.retry_max.max(RETRY_FIRST));
                    if !self.wait(lane, Cause::RateLimited, pause, shutdown).await {
                        return None;
                    }
                }
                other => return Some(other),
            }
        }
    }

    /// The command, admitted; or the refusal and the command id to answer it under.
    fn admit(
        &self,
        message: &jetstream::Message,
        fallback: uuid::Uuid,
    ) -> Result<IncomingCommand, (Rejection, uuid::Uuid)> {
        let headers = message.headers.as_ref();
        let command_id = incoming::command_id(headers, fallback).map_err(|rejection| {
            (
                self.access.refuse_before_admission(headers, rejection),
                fallback,
            )
        })?;
        let (aggregate, name) =
            incoming::split_subject(&message.subject, self.subjects.prefix(), "jobs").ok_or_else(
                || {
                    let rejection = Rejection::new(
                        ErrorCode::UnknownCommand,
                        format!("`{}` is not a durable command subject", message.subject),
                    );
                    (
                        self.access.refuse_before_admission(headers, rejection),
                        command_id,
                    )
                },
            )?;
        crate::access::admit(
            &self.access,
            command_id,
            aggregate,
            name,
            message.headers.as_ref(),
            &message.payload,
            &self.schemas,
        )
        .map_err(|rejection| (rejection, command_id))
    }

    /// Runs the command until it gets an answer: an outage is waited out however long it
    /// lasts; internal errors are tried again until `max_deliver` attempts (counting the
    /// deliveries before this one) have failed. `None`: shutdown came while it waited.
    async fn execute(
        &self,
        lane: usize,
        command: IncomingCommand,
        delivered: i64,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Option<(CommandReply, (&'static str, String))> {
        let target = (command.aggregate_type(), command.aggregate_id());
        let mut attempts = delivered;
        loop {
            let outcome = {
                // Not held while waiting: a waiting lane takes no place from the other commands.
                // Held until the command finishes, even past the deadline.
                let permit = Arc::clone(&self.in_flight).acquire_owned().await.ok()?;
                handling::run(&self.executor, command.clone(), self.deadline, Some(permit)).await
            };
            let cause = match &outcome.reply {
                // The account's queue is full: not an answer for a durable command, which
                // waits its turn like one over its sender's rate.
                CommandReply::Rejected { error, .. } if error.code == ErrorCode::RateLimited => {
                    Cause::RateLimited
                }
                _ if !outcome.transient => return Some((outcome.reply, target)),
                CommandReply::Rejected { error, .. } if error.code == ErrorCode::Unavailable => {
                    Cause::Outage
                }
                _ => Cause::Internal,
            };
            if cause == Cause::Internal {
                if attempts >= self.max_deliver {
                    return Some((outcome.reply, target));
                }
                attempts += 1;
            }
            if !self.wait(lane, cause, backoff.pause(), shutdown).await {
                return None;
            }
        }
    }
}

/// The aggregate type a durable subject names, for recording a rejection that never parsed.
fn aggregate_type_of(subject: &str, prefix: &str) -> &'static str {
    match incoming::split_subject(subject, prefix, "jobs") {
        Some(("transfer", _)) => "transfer",
        _ => "account",
    }
}
