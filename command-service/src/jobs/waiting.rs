//! Durable commands that wait for another attempt instead of an answer: an outage or a sender
//! over its rate is waited out in place (never answered, never naked), so this is where the
//! wait is paced (a jittered backoff) and made visible (`/readyz` and the
//! `tally_durable_command*` metrics), since a waiting command holds up its whole lane.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use platform::metrics::MetricsError;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::Jobs;
use super::lanes::LANES;

/// First pause before trying a command again; it doubles up to `Jobs::retry_max`.
pub(super) const RETRY_FIRST: Duration = Duration::from_millis(100);

/// Why a command is being tried again rather than answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
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
    pub(super) fn done(&self, lane: usize) {
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
pub(super) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(super) fn new(max: Duration) -> Self {
        Backoff {
            next: RETRY_FIRST.min(max),
            max,
        }
    }

    pub(super) fn pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

impl Jobs {
    /// Marks the lane as waiting for `cause` and pauses; `false` if shutdown came first.
    pub(super) async fn wait(
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
