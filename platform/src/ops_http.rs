//! `/healthz`, `/readyz` and `/metrics`, shared by every service. The query-service mounts them
//! on its API router; the other services serve them on a small ops port of their own.
//!
//! Platform checks what every service depends on (PostgreSQL, NATS) and serves each instance's
//! registry and pool. What only one service knows (a projection's lag, the outbox backlog) it
//! hands in as a [`ReadinessCheck`] or a [`MetricsSource`]: platform never names another
//! crate's tables or consumers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// For implementing [`ReadinessCheck`] and [`MetricsSource`] without a dependency of one's own.
pub use async_trait::async_trait;

/// Each dependency check, and each figure read at scrape time, gets this long before it counts
/// as failed (or is left out of `/metrics`). A [`ReadinessCheck`] or [`MetricsSource`] bounds
/// its own waits with it.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Each `/readyz` check gets this long, all of them at once, so the whole answer comes well
/// within a second even while a dependency is down: a probe with a 1 s timeout (a load
/// balancer's, Kubernetes') that gets no answer learns nothing, and a pool waiting out its
/// acquire timeout (2 s by default) on a dead PostgreSQL would otherwise hold the answer.
/// Checks that take longer count as failed, with a reason saying so.
pub const READY_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// One more condition for `/readyz`, supplied by the service that knows it.
#[async_trait]
pub trait ReadinessCheck: Send + Sync {
    /// The check's name in the report (`"projection_lag"`, `"outbox_backlog"`).
    fn name(&self) -> &'static str;

    /// `Ok` while ready; otherwise why not, for operators: never credentials or SQL. Cut off
    /// (and reported as failed) after [`READY_CHECK_TIMEOUT`], so keep it to one cheap look.
    async fn check(&self) -> Result<(), String>;
}

/// Prometheus text a service adds to `/metrics`, read at scrape time (e.g. from the database).
#[async_trait]
pub trait MetricsSource: Send + Sync {
    /// Complete families (`# HELP`, `# TYPE`, samples); empty to leave them out this scrape,
    /// e.g. while PostgreSQL is down. Bounds its own waits with [`CHECK_TIMEOUT`].
    async fn render(&self) -> String;
}

/// What readiness depends on, and what `/metrics` serves.
#[derive(Clone)]
pub struct Readiness {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    /// This service instance's metrics.
    pub registry: prometheus::Registry,
    /// Checked after PostgreSQL and NATS, in the order added.
    checks: Vec<Arc<dyn ReadinessCheck>>,
    /// Rendered after the registry and the pool, in the order added.
    sources: Vec<Arc<dyn MetricsSource>>,
    /// Whether the last report was ready: readiness changes are logged once each, not every
    /// probe (an outage is expected to fail probes every few seconds for its whole length).
    last_ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("pool", &self.pool)
            .field("nats", &self.nats)
            .field(
                "checks",
                &self.checks.iter().map(|c| c.name()).collect::<Vec<_>>(),
            )
            .field("sources", &self.sources.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize)]
pub struct ReadinessReport {
    pub ready: bool,
    pub checks: Vec<Check>,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// Why it failed; never contains credentials or SQL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Readiness {
    /// Ready while PostgreSQL answers and NATS is connected; `/metrics` serves `registry` and
    /// the pool.
    pub fn new(pool: PgPool, nats: async_nats::Client, registry: prometheus::Registry) -> Self {
        Readiness {
            pool,
            nats,
            registry,
            checks: Vec::new(),
            sources: Vec::new(),
            last_ready: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Also not ready while `check` fails.
    #[must_use]
    pub fn with_check(mut self, check: Arc<dyn ReadinessCheck>) -> Self {
        self.checks.push(check);
        self
    }

    /// Also serve `source` on `/metrics`.
    #[must_use]
    pub fn with_metrics(mut self, source: Arc<dyn MetricsSource>) -> Self {
        self.sources.push(source);
        self
    }

    /// Every check at once, each cut off after [`READY_CHECK_TIMEOUT`]: the report comes
    /// within about that long whatever is down.
    pub async fn check(&self) -> ReadinessReport {
        let postgres = async {
            match tokio::time::timeout(READY_CHECK_TIMEOUT, crate::db::ping(&self.pool)).await {
                Ok(Ok(())) => None,
                // The error's kind only (`Connection refused`, `pool timed out`): sqlx's
                // messages name neither credentials nor SQL.
                Ok(Err(error)) => Some(format!("PostgreSQL query failed: {error}")),
                Err(_) => Some(format!(
                    "PostgreSQL did not answer within {} ms",
                    READY_CHECK_TIMEOUT.as_millis()
                )),
            }
        };
        // The service's own checks on tasks of their own (dropped with the set if the probe
        // goes away), each cut off on its own.
        let mut others = tokio::task::JoinSet::new();
        for (index, check) in self.checks.iter().enumerate() {
            let check = Arc::clone(check);
            others.spawn(async move {
                let reason = match tokio::time::timeout(READY_CHECK_TIMEOUT, check.check()).await {
                    Ok(result) => result.err(),
                    Err(_) => Some(format!(
                        "no answer within {} ms",
                        READY_CHECK_TIMEOUT.as_millis()
                    )),
                };
                (index, reason)
            });
        }
        let others = async {
            // A check whose task panicked (a bug) keeps this reason: it fails readiness
            // rather than the probe.
            let mut reasons = vec![Some("check failed".to_owned()); self.checks.len()];
            while let Some(joined) = others.join_next().await {
                match joined {
                    Ok((index, reason)) => reasons[index] = reason,
                    Err(error) => tracing::error!(%error, "readiness check panicked"),
                }
            }
            reasons
        };
        let (postgres, others) = tokio::join!(postgres, others);
        let nats = match self.nats.connection_state() {
            async_nats::connection::State::Connected => None,
            other => Some(format!("NATS connection is {other}")),
        };
        let mut checks = vec![
            Check {
                name: "postgres",
                ok: postgres.is_none(),
                reason: postgres,
            },
            Check {
                name: "nats",
                ok: nats.is_none(),
                reason: nats,
            },
        ];
        for (check, reason) in self.checks.iter().zip(others) {
            checks.push(Check {
                name: check.name(),
                ok: reason.is_none(),
                reason,
            });
        }
        let report = ReadinessReport {
            ready: checks.iter().all(|c| c.ok),
            checks,
        };
        self.log_change(&report);
        report
    }

    /// One line when readiness changes, rather than one per probe.
    fn log_change(&self, report: &ReadinessReport) {
        if self.last_ready.swap(report.ready, Ordering::Relaxed) == report.ready {
            return;
        }
        if report.ready {
            tracing::info!("ready again");
        } else {
            let failing: Vec<String> = report
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: {}", c.name, c.reason.as_deref().unwrap_or("failed")))
                .collect();
            tracing::warn!(failing = %failing.join("; "), "not ready");
        }
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(readiness): State<Readiness>) -> Response {
    let report = readiness.check().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

/// Prometheus text: this instance's metrics, the pool, and what the service's sources read at
/// scrape time.
async fn metrics(State(readiness): State<Readiness>) -> Response {
    let mut text = crate::metrics::render(&readiness.registry);
    text.push_str(&crate::metrics::pool_text(&readiness.pool));
    for source in &readiness.sources {
        text.push_str(&source.render().await);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}

/// `/healthz` (alive), `/readyz` (dependencies reachable) and `/metrics`.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(readiness)
}

/// Serves `router` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // With the peer address, so per-client limits can key on it.
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}

/// Binds `addr` (port 0 picks a free port) and reports the address actually bound.
pub async fn bind(
    addr: std::net::SocketAddr,
) -> Result<(TcpListener, std::net::SocketAddr), BindError> {
    let error = |source| BindError { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    Ok((listener, bound))
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}")]
pub struct BindError {
    pub addr: std::net::SocketAddr,
    #[source]
    pub source: std::io::Error,
}
