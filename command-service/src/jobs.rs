//! The durable front door: `<prefix>.jobs.<aggregate>.<command>` is captured by the commands
//! stream (deduplicated by `Nats-Msg-Id`) and consumed here by a durable pull consumer, so a
//! command published while the service is down runs when it comes back. Each result goes to
//! the command log and to the inbox its sender named in `Tally-Reply-To`.
//!
//! Order: durable commands on one aggregate run in the order they were published. The consumer
//! uses a pinned priority group, so one instance at a time receives them (another takes over
//! when it stops pulling), and inside that instance each aggregate has one lane that runs its
//! commands one after another; different aggregates run in parallel.
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

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use domain::{CommandReply, ErrorCode};
use futures::StreamExt;
use platform::metrics::MetricsError;
use platform::nats::{StreamNames, Subjects};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use rand::Rng;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::executor::{self, Executor};
use crate::handling;
use crate::incoming::{self, HEADER_COMMAND_ID, HEADER_REPLY_TO, IncomingCommand};
use crate::rejection::Rejection;
use crate::schema_check::SchemaRegistry;

pub const CONSUMER: &str = "command-service";
/// A delivery not acknowledged within this is redelivered; held messages are kept alive well
/// inside it (`KEEP_ALIVE_EVERY`).
const ACK_WAIT: Duration = Duration::from_secs(30);
/// How often every message a lane holds gets a progress ack (a third of `ACK_WAIT`, so one
/// lost or late keep-alive does not yet cost a redelivery).
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(10);
/// Messages pulled per request.
const PULL_BATCH_MAX: usize = 64;
/// Parallel lanes; an aggregate always maps to the same lane.
const LANES: usize = 16;
/// Durable commands delivered and not yet acknowledged, at most (the consumer's
/// `max_ack_pending`, enforced by the server). Each is held in a lane and kept alive there;
/// the lane channels are this deep, so the puller never waits with pulled messages going stale
/// in its buffer.
const ACK_PENDING_MAX: usize = 1024;
/// The priority group the instances pull with; one is pinned at a time.
const PRIORITY_GROUP: &str = "jobs";
/// How long the pinned instance may stop pulling before another takes over.
const PIN_TIMEOUT: Duration = Duration::from_secs(10);
/// First pause before trying a command again; it doubles up to `Jobs::retry_max`.
const RETRY_FIRST: Duration = Duration::from_millis(100);

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

/// Why a command is being tried again rather than answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// PostgreSQL down or too slow: never an answer, waited out however long it lasts.
    Outage,
    /// The sender is over its rate: waited out too (the queue is its throttle).
    RateLimited,
    /// An unexpected error: tried again, up to the delivery budget.
    Internal,
}

impl Cause {
    const ALL: [Cause; 3] = [Cause::Outage, Cause::RateLimited, Cause::Internal];

    fn label(self) -> &'static str {
        match self {
            Cause::Outage => "unavailable",
            Cause::RateLimited => "rate_limited",
            Cause::Internal => "internal",
        }
    }
}

/// What became of the message a lane handled.
#[derive(Debug, PartialEq, Eq)]
enum Handled {
    /// Answered (result recorded and published) and acknowledged.
    Answered,
    /// Shutdown came while it waited: neither answered nor acknowledged.
    Abandoned,
}

/// Which lanes hold a command that waits for another attempt, and since when: for `/readyz`
/// and `/metrics`.
#[derive(Debug)]
pub struct Waiting {
    lanes: Mutex<[Option<(Instant, Cause)>; LANES]>,
    commands: IntGaugeVec,
    longest_s: prometheus::Gauge,
    retries: IntCounterVec,
}

impl Waiting {
    pub fn register(registry: &Registry) -> Result<Arc<Self>, MetricsError> {
        let commands = IntGaugeVec::new(
            Opts::new(
                "tally_durable_commands_waiting",
                "Durable commands waiting for another attempt, by cause (`unavailable`: PostgreSQL down or too slow); each holds up the commands behind it in its lane.",
            ),
            &["cause"],
        )?;
        let longest_s = prometheus::Gauge::new(
            "tally_durable_command_wait_seconds",
            "How long the longest-waiting durable command has waited so far (0: none waits).",
        )?;
        let retries = platform::metrics::counter_vec(
            registry,
            "tally_durable_command_retries_total",
            "Attempts of durable commands that ended without an answer and were tried again, by cause.",
            &["cause"],
        )?;
        registry.register(Box::new(commands.clone()))?;
        registry.register(Box::new(longest_s.clone()))?;
        for cause in Cause::ALL {
            commands.with_label_values(&[cause.label()]).set(0);
        }
        Ok(Arc::new(Waiting {
            lanes: Mutex::new([None; LANES]),
            commands,
            longest_s,
            retries,
        }))
    }

    /// The command at the head of `lane` failed for `cause` and will be tried again.
    fn retrying(&self, lane: usize, cause: Cause) {
        self.retries.with_label_values(&[cause.label()]).inc();
        self.update(|lanes| {
            let since = lanes[lane].map_or_else(Instant::now, |(since, _)| since);
            lanes[lane] = Some((since, cause));
        });
    }

    /// The head of `lane` no longer waits (answered, or given back at shutdown).
    fn done(&self, lane: usize) {
        self.update(|lanes| lanes[lane] = None);
    }

    fn update(&self, change: impl FnOnce(&mut [Option<(Instant, Cause)>; LANES])) {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut lanes);
        for cause in Cause::ALL {
            let n = lanes.iter().flatten().filter(|(_, c)| *c == cause).count();
            self.commands
                .with_label_values(&[cause.label()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let longest = lanes
            .iter()
            .flatten()
            .map(|(since, _)| since.elapsed())
            .max();
        self.longest_s
            .set(longest.unwrap_or_default().as_secs_f64());
    }

    /// Why `/readyz` should say not ready: durable commands waiting out an outage (a sender
    /// over its rate is not the service's unreadiness).
    pub fn not_ready_reason(&self) -> Option<String> {
        let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let outage: Vec<Instant> = lanes
            .iter()
            .flatten()
            .filter(|(_, cause)| *cause == Cause::Outage)
            .map(|(since, _)| *since)
            .collect();
        let longest = outage.iter().map(Instant::elapsed).max()?;
        Some(format!(
            "{} durable commands wait for PostgreSQL (unavailable or too slow), the longest for {} s; the commands queued behind them on the same lanes wait too",
            outage.len(),
            longest.as_secs()
        ))
    }
}

/// `/readyz` with one more check, `durable_commands`: not ready while durable commands wait out
/// an outage. The platform's router answers every other path.
pub fn with_readiness(
    router: axum::Router,
    readiness: platform::ops_http::Readiness,
    waiting: Arc<Waiting>,
) -> axum::Router {
    router.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let readiness = readiness.clone();
            let waiting = Arc::clone(&waiting);
            async move {
                use axum::response::IntoResponse;
                if request.uri().path() != "/readyz" {
                    return next.run(request).await;
                }
                let mut report = readiness.check().await;
                let reason = waiting.not_ready_reason();
                report.checks.push(platform::ops_http::Check {
                    name: "durable_commands",
                    ok: reason.is_none(),
                    reason,
                });
                report.ready = report.checks.iter().all(|c| c.ok);
                let status = if report.ready {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                };
                (status, axum::Json(report)).into_response()
            }
        },
    ))
}

/// Pauses between attempts: doubling from `RETRY_FIRST` to a cap, each jittered down by up to
/// half so the lanes do not all knock on PostgreSQL at the same instant.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Backoff {
            next: RETRY_FIRST.min(max),
            max,
        }
    }

    fn pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
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
                // One delivery more than the budget: a message whose earlier deliveries all
                // ended with no answer (the process died in them) gets its final answer on it
                // without being run again.
                max_deliver: self.max_deliver.saturating_add(1),
                max_ack_pending: i64::try_from(ACK_PENDING_MAX).unwrap_or(1024),
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
        for lane in 0..LANES {
            let (tx, rx) = mpsc::channel::<jetstream::Message>(ACK_PENDING_MAX);
            tasks.spawn(self.clone().run_lane(lane, rx, shutdown.clone()));
            lanes.push(tx);
        }
        // Messages a predecessor held unanswered (given back at its shutdown, or lost with it)
        // come again in no particular order and can arrive behind newer ones
        // (nats-server#6114): gather them before anything runs, and start in stream order.
        let owed = consumer.cached_info().num_ack_pending;
        if owed > 0 {
            let gathered = gather_redeliveries(&mut messages, owed, &shutdown).await;
            tracing::info!(
                owed,
                gathered = gathered.len(),
                "durable commands owed by a predecessor gathered; starting in stream order"
            );
            for message in gathered {
                let lane = lane_of(&message.payload);
                if lanes[lane].send(message).await.is_err() {
                    break;
                }
            }
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

    /// One lane: its messages in arrival order, one at a time. Everything it holds is kept
    /// alive while the head runs or waits, so no held message is redelivered (and so none can
    /// come back out of order). At shutdown it finishes what it holds, unless the head is
    /// waiting: then the head and everything behind it are given back, in order, with a nak.
    async fn run_lane(
        self,
        lane: usize,
        mut incoming: mpsc::Receiver<jetstream::Message>,
        shutdown: CancellationToken,
    ) {
        let mut queue: VecDeque<jetstream::Message> = VecDeque::new();
        let mut open = true;
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE_EVERY);
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let Some(head) = queue.pop_front() else {
                if !open {
                    return;
                }
                match incoming.recv().await {
                    Some(message) => queue.push_back(message),
                    None => open = false,
                }
                continue;
            };
            let handled = self.handle(lane, &head, &shutdown);
            tokio::pin!(handled);
            let outcome = loop {
                tokio::select! {
                    biased;
                    outcome = &mut handled => break outcome,
                    message = incoming.recv(), if open && queue.len() < ACK_PENDING_MAX => {
                        match message {
                            Some(message) => queue.push_back(message),
                            None => open = false,
                        }
                    }
                    _ = keep_alive.tick() => {
                        for message in std::iter::once(&head).chain(queue.iter()) {
                            if let Err(error) = message.ack_with(AckKind::Progress).await {
                                tracing::debug!(%error, "progress ack failed; the next one may arrive in time");
                            }
                        }
                    }
                }
            };
            self.waiting.done(lane);
            if outcome == Handled::Abandoned {
                // Nothing behind the head may be decided before it, so none of it is run here:
                // it all goes back now (a nak, in order) rather than after ACK_WAIT. A successor
                // may still get them behind newer messages (nats-server#6114).
                incoming.close();
                while let Some(message) = incoming.recv().await {
                    queue.push_back(message);
                }
                for message in std::iter::once(&head).chain(queue.iter()) {
                    if let Err(error) = message.ack_with(AckKind::Nak(None)).await {
                        tracing::debug!(%error, "nak at shutdown failed; redelivered after the ack wait");
                    }
                }
                tracing::info!(
                    lane,
                    given_back = queue.len() + 1,
                    "durable commands waiting at shutdown given back to the stream"
                );
                return;
            }
        }
    }

    /// Decides one durable command (trying it again in place until it gets an answer), records
    /// and publishes the answer, and acknowledges the message.
    async fn handle(
        &self,
        lane: usize,
        message: &jetstream::Message,
        shutdown: &CancellationToken,
    ) -> Handled {
        let started = Instant::now();
        let (stream_sequence, delivered) = message
            .info()
            .map(|i| (i.stream_sequence, i.delivered))
            .unwrap_or((0, 1));
        let fallback = executor::derived_command_id(&self.streams.commands, stream_sequence);
        tracing::debug!(lane, stream_sequence, delivered, "durable command");
        let unparsed_target = || {
            (
                aggregate_type_of(&message.subject, self.subjects.prefix()),
                String::new(),
            )
        };
        let mut backoff = Backoff::new(self.retry_max);
        // `decided`: the executor answered, and recorded whatever it means to keep (it keeps no
        // refusal that says "retry": contention, another owner's account).
        let (reply, target, decided) = if delivered > self.max_deliver {
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
            (rejection.into_reply(command_id), unparsed_target(), false)
        } else {
            // Admission once: a command admitted keeps its admission while it waits, even if
            // its token expires meanwhile.
            let admitted = loop {
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
                            return Handled::Abandoned;
                        }
                    }
                    other => break other,
                }
            };
            match admitted {
                Err((rejection, command_id)) => {
                    (rejection.into_reply(command_id), unparsed_target(), false)
                }
                Ok(command) => match self
                    .execute(lane, command, delivered, &mut backoff, shutdown)
                    .await
                {
                    Some((reply, target)) => (reply, target, true),
                    None => return Handled::Abandoned,
                },
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
        let command_id = reply.command_id();
        // Rejections that never reached the executor are recorded here, so the result of every
        // durable command is readable later; refusals of the sender write nothing.
        let recordable = match &reply {
            CommandReply::Rejected { error, .. } => {
                !decided && !crate::access::is_access_refusal(error.code)
            }
            CommandReply::Accepted { .. } => false,
        };
        // Not recorded is not answered: PostgreSQL is down, so this waits like any outage.
        while recordable
            && let Err(error) = self
                .executor
                .repository()
                .log_rejection(command_id, target.0, &target.1, &reply)
                .await
        {
            tracing::warn!(%error, %command_id, "rejection of a durable command not recorded; trying again");
            if !self
                .wait(lane, Cause::Outage, backoff.pause(), shutdown)
                .await
            {
                return Handled::Abandoned;
            }
        }
        if let Some(inbox) = result_inbox(message.headers.as_ref()) {
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_COMMAND_ID, command_id.to_string().as_str());
            if let Err(error) = self
                .nats
                .publish_with_headers(inbox, headers, handling::reply_bytes(&reply))
                .await
            {
                tracing::warn!(%error, %command_id, "result announcement not sent (the command log has it)");
            }
        }
        if let Err(error) = message.double_ack().await {
            tracing::warn!(%error, %command_id, "ack failed; a redelivery will get the logged result");
        }
        Handled::Answered
    }

    /// The command, admitted; or the refusal and the command id to answer it under.
    fn admit(
        &self,
        message: &jetstream::Message,
        fallback: uuid::Uuid,
    ) -> Result<IncomingCommand, (Rejection, uuid::Uuid)> {
        let command_id = incoming::command_id(message.headers.as_ref(), fallback)
            .map_err(|rejection| (rejection, fallback))?;
        let (aggregate, name) =
            incoming::split_subject(&message.subject, self.subjects.prefix(), "jobs").ok_or_else(
                || {
                    (
                        Rejection::new(
                            ErrorCode::UnknownCommand,
                            format!("`{}` is not a durable command subject", message.subject),
                        ),
                        command_id,
                    )
                },
            )?;
        incoming::admit(
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

    /// Marks the lane as waiting for `cause` and pauses; `false` if shutdown came first.
    async fn wait(
        &self,
        lane: usize,
        cause: Cause,
        pause: Duration,
        shutdown: &CancellationToken,
    ) -> bool {
        self.waiting.retrying(lane, cause);
        tokio::select! {
            biased;
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(pause) => true,
        }
    }
}

/// Pulls until `owed` redelivered messages (deliveries after the first) are in hand, or until
/// a message lost with a dead predecessor would have been redelivered (`ACK_WAIT` plus a
/// margin), keeping everything gathered alive; returns it all sorted by stream sequence.
async fn gather_redeliveries(
    messages: &mut pull::Stream,
    owed: usize,
    shutdown: &CancellationToken,
) -> Vec<jetstream::Message> {
    let deadline = tokio::time::Instant::now() + ACK_WAIT + KEEP_ALIVE_EVERY;
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE_EVERY);
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gathered: Vec<jetstream::Message> = Vec::new();
    let mut redelivered = 0;
    while redelivered < owed && gathered.len() < ACK_PENDING_MAX {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(owed, redelivered, "not every owed durable command came back; starting anyway");
                break;
            }
            _ = keep_alive.tick() => {
                for message in &gathered {
                    if let Err(error) = message.ack_with(AckKind::Progress).await {
                        tracing::debug!(%error, "progress ack failed; the next one may arrive in time");
                    }
                }
            }
            next = messages.next() => match next {
                None => break,
                Some(Err(error)) => {
                    tracing::warn!(%error, "durable command consumer error");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Some(Ok(message)) => {
                    if message.info().is_ok_and(|i| i.delivered > 1) {
                        redelivered += 1;
                    }
                    gathered.push(message);
                }
            },
        }
    }
    gathered.sort_by_key(|m| m.info().map_or(0, |i| i.stream_sequence));
    gathered
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

/// Where a durable command's result goes: the inbox its sender named in `Tally-Reply-To`, and
/// only an inbox. A shared results subject would let every client read every result, and any
/// other subject would make this service publish there with its own rights.
fn result_inbox(headers: Option<&HeaderMap>) -> Option<String> {
    let named = headers?.get(HEADER_REPLY_TO)?.as_str().trim();
    platform::nats::is_inbox_subject(named).then(|| named.to_owned())
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
