//! The durable front door: `<prefix>.jobs.<aggregate>.<command>` is captured by the commands
//! stream (deduplicated by `Nats-Msg-Id`) and consumed here by a durable pull consumer, so a
//! command published while the service is down runs when it comes back. Each result goes to
//! the command log and to the inbox its sender named in `Tally-Reply-To`.
//!
//! Order: durable commands on one aggregate run in the order they were published. The consumer
//! uses a pinned priority group, so one instance at a time receives them (another takes over
//! when it stops pulling), and inside that instance each aggregate has one lane that runs its
//! commands one after another; different aggregates run in parallel. An instance that becomes
//! the pinned one first gathers what its predecessor held unanswered (`redeliveries`), so a
//! takeover after a crash does not run newer commands before the ones the dead instance held.
//!
//! Failures that are not answers: PostgreSQL down or too slow, the sender over its rate, an
//! internal error. A lane keeps such a command and tries it again in place, with a bounded
//! backoff, holding everything queued behind it. It never naks it: a redelivery would come back
//! behind newer messages (nats-server#6114) and so break the order, and would spend the
//! consumer's delivery budget. Every message a lane holds gets a progress ack every
//! `KEEP_ALIVE_EVERY`, so the server redelivers nothing held. An outage, however long, is waited
//! out (shown on `/readyz` and in `tally_durable_commands_waiting`); only internal errors and
//! deliveries that ended with no answer at all (the process died in them) count against
//! `max_deliver`, which still caps a poison message.

mod answering;
mod deciding;
mod lanes;
mod redeliveries;
mod waiting;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use platform::nats::{StreamNames, Subjects};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::executor::Executor;
use crate::schema_check::SchemaRegistry;
use lanes::Lanes;

pub use waiting::{Waiting, with_readiness};

pub const CONSUMER: &str = "command-service";
/// A delivery not acknowledged within this is redelivered; held messages are kept alive well
/// inside it (`KEEP_ALIVE_EVERY`).
const ACK_WAIT: Duration = Duration::from_secs(30);
/// How often every message a lane holds gets a progress ack (a third of `ACK_WAIT`, so one
/// lost or late keep-alive does not yet cost a redelivery).
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(10);
/// Messages pulled per request.
const PULL_BATCH_MAX: usize = 64;
/// Durable commands delivered and not yet acknowledged, at most (the consumer's
/// `max_ack_pending`, enforced by the server). Each is held in a lane and kept alive there;
/// the lane channels are this deep, so the puller never waits with pulled messages going stale
/// in its buffer.
const ACK_PENDING_MAX: usize = 1024;
/// The priority group the instances pull with; one is pinned at a time.
const PRIORITY_GROUP: &str = "jobs";
/// How long the pinned instance may stop pulling before another takes over.
const PIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a consumer error before pulling again, so a broken connection is not spun on.
const CONSUMER_ERROR_PAUSE: Duration = Duration::from_millis(500);

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
    /// Attempts of a durable command that may end in an internal error or in no answer at all
    /// before it is answered `internal`; waiting out an outage never counts.
    pub max_deliver: i64,
    /// Longest pause between two attempts of a command that is waiting.
    pub retry_max: Duration,
    pub waiting: Arc<Waiting>,
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
            .create_consumer(self.consumer_config())
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
        let lanes = Lanes::spawn(&self, &shutdown);
        // The pin this instance was last delivered under. Messages a predecessor held
        // unanswered (lost with it, or given back) come again only after the ack wait, in no
        // particular order and behind newer ones (nats-server#6114), while a new pin delivers
        // the newer ones at once: on each new pin (at start, or on taking over from an instance
        // that died), gather what is owed before anything runs, and start in stream order.
        let mut pin: Option<String> = None;
        let mut first = true;
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
                    tokio::time::sleep(CONSUMER_ERROR_PAUSE).await;
                    continue;
                }
            };
            let pinned_as = message
                .headers
                .as_ref()
                .and_then(|h| h.get_last(async_nats::header::NATS_PIN_ID))
                .map(|id| id.as_str().to_owned());
            let taking_over = first || (pinned_as.is_some() && pinned_as != pin);
            first = false;
            if pinned_as.is_some() {
                pin = pinned_as;
            }
            if !taking_over {
                if !lanes.dispatch(message).await {
                    break;
                }
                continue;
            }
            tracing::info!(
                pin = pin.as_deref().unwrap_or_default(),
                "this instance receives the durable commands now"
            );
            let gathered = redeliveries::gather(&mut messages, &stream, message, &shutdown).await;
            let redelivered = gathered
                .iter()
                .filter(|m| m.info().is_ok_and(|i| i.delivered > 1))
                .count();
            if redelivered > 0 {
                tracing::info!(
                    redelivered,
                    gathered = gathered.len(),
                    "pinned with durable commands a predecessor held; starting in stream order"
                );
            }
            let mut stopped = false;
            for message in gathered {
                if !lanes.dispatch(message).await {
                    stopped = true;
                    break;
                }
            }
            if stopped {
                break;
            }
        }
        // Stop pulling, then let each lane finish what it holds.
        drop(messages);
        // Unacknowledged messages are redelivered after ACK_WAIT to whichever instance runs.
        lanes.finish().await;
        // Hand the pin over now rather than after PIN_TIMEOUT, so a successor starts at once.
        if let Err(error) = stream.unpin_consumer(CONSUMER, PRIORITY_GROUP).await {
            tracing::debug!(%error, "unpin on shutdown failed; the pin expires by itself");
        }
        tracing::info!("durable command consumer stopped");
        Ok(())
    }

    fn consumer_config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(CONSUMER.to_owned()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            // One delivery more than the budget: a message whose earlier deliveries all
            // ended with no answer (the process died in them) gets its final answer on it
            // without being run again.
            max_deliver: self.max_deliver.saturating_add(1),
            max_ack_pending: i64::try_from(ACK_PENDING_MAX).unwrap_or(1024),
            priority_policy: jetstream::consumer::PriorityPolicy::PinnedClient,
            priority_groups: vec![PRIORITY_GROUP.to_owned()],
            priority_timeout: PIN_TIMEOUT,
            ..Default::default()
        }
    }
}

/// Ticks every `KEEP_ALIVE_EVERY`; a tick missed while busy is not made up with a burst.
fn progress_timer() -> tokio::time::Interval {
    let mut timer = tokio::time::interval(KEEP_ALIVE_EVERY);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}

/// A progress ack for a message held, so the server does not redeliver it.
async fn ack_progress(message: &jetstream::Message) {
    if let Err(error) = message.ack_with(AckKind::Progress).await {
        tracing::debug!(%error, "progress ack failed; the next one may arrive in time");
    }
}
