//! `/healthz` and `/readyz`, shared by every service. The query-service mounts them on its API
//! router; the other services serve them on a small ops port of their own.

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

/// Each dependency check gets this long before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What readiness depends on.
#[derive(Debug, Clone)]
pub struct Readiness {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    /// When set, not ready while a projection lags the events stream by more than this.
    pub projection_lag: Option<ProjectionLag>,
    /// When set (command-service), not ready while the outbox backlog is over its limit.
    pub outbox: Option<crate::metrics::OutboxWatch>,
    /// This service instance's metrics.
    pub registry: prometheus::Registry,
}

/// A projection's distance behind the events stream.
#[derive(Debug, Clone)]
pub struct ProjectionLag {
    pub jetstream: async_nats::jetstream::Context,
    pub events_stream: String,
    /// The projections this service depends on.
    pub projections: Vec<&'static str>,
    pub events_max: u64,
}

impl ProjectionLag {
    /// Events of the projection's own subjects that it has not applied yet: what its durable
    /// consumer still has to deliver or has in flight. (The stream's head minus the
    /// projection's position would count other aggregates' events too.) Before the consumer
    /// exists, everything in the stream is behind.
    pub async fn events_behind(&self, projection: &str) -> Result<u64, String> {
        let mut stream = self
            .jetstream
            .get_stream(&self.events_stream)
            .await
            .map_err(|e| e.to_string())?;
        match stream
            .consumer_info(format!("projection-{projection}"))
            .await
        {
            Ok(info) => Ok(info.num_pending + u64::try_from(info.num_ack_pending).unwrap_or(0)),
            Err(_) => Ok(stream
                .info()
                .await
                .map_err(|e| e.to_string())?
                .state
                .messages),
        }
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
    pub async fn check(&self) -> ReadinessReport {
        let postgres = match tokio::time::timeout(CHECK_TIMEOUT, crate::db::ping(&self.pool)).await
        {
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some("query failed".to_owned()),
            Err(_) => Some("timed out".to_owned()),
        };
        let nats = match self.nats.connection_state() {
            async_nats::connection::State::Connected => None,
            other => Some(format!("{other}")),
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
        if let Some(lag) = &self.projection_lag {
            let mut reasons = Vec::new();
            for projection in &lag.projections {
                match tokio::time::timeout(CHECK_TIMEOUT, lag.events_behind(projection)).await {
                    Ok(Ok(behind)) if behind <= lag.events_max => {}
                    Ok(Ok(behind)) => reasons.push(format!(
                        "projection {projection} is {behind} events behind (limit {})",
                        lag.events_max
                    )),
                    Ok(Err(error)) => reasons.push(error),
                    Err(_) => reasons.push("timed out".to_owned()),
                }
            }
            checks.push(Check {
                name: "projection_lag",
                ok: reasons.is_empty(),
                reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
            });
        }
        if let Some(outbox) = &self.outbox {
            let reason = match tokio::time::timeout(CHECK_TIMEOUT, outbox.backlog(&self.pool)).await
            {
                Ok(Ok(backlog))
                    if u64::try_from(backlog.events).unwrap_or(0) <= outbox.backlog_max =>
                {
                    None
                }
                Ok(Ok(backlog)) => Some(format!(
                    "{} committed events wait for the relay (limit {})",
                    backlog.events, outbox.backlog_max
                )),
                Ok(Err(_)) => Some("backlog query failed".to_owned()),
                Err(_) => Some("timed out".to_owned()),
            };
            checks.push(Check {
                name: "outbox_backlog",
                ok: reason.is_none(),
                reason,
            });
        }
        ReadinessReport {
            ready: checks.iter().all(|c| c.ok),
            checks,
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

/// Prometheus text: this instance's metrics, the pool, and what the database says (projection
/// bookkeeping; the outbox backlog on the command-service). Database figures are left out,
/// not failed, while PostgreSQL is down: the rest still matters then.
async fn metrics(State(readiness): State<Readiness>) -> Response {
    let mut text = crate::metrics::render(&readiness.registry);
    text.push_str(&crate::metrics::pool_text(&readiness.pool));
    if let Ok(Ok(figures)) = tokio::time::timeout(
        CHECK_TIMEOUT,
        crate::projection_metrics::figures(&readiness.pool),
    )
    .await
    {
        text.push_str(&crate::projection_metrics::render(&figures));
    }
    if let Some(lag) = &readiness.projection_lag {
        text.push_str(&lag_text(lag, &readiness.pool).await);
    }
    if let Some(outbox) = &readiness.outbox
        && let Ok(Ok(backlog)) =
            tokio::time::timeout(CHECK_TIMEOUT, outbox.backlog(&readiness.pool)).await
    {
        text.push_str(&crate::metrics::OutboxWatch::text(backlog));
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

/// Each projection's lag in events (its consumer's undelivered and unacknowledged messages)
/// and in seconds (how long it has been behind without applying anything; 0 when caught up).
async fn lag_text(lag: &ProjectionLag, pool: &PgPool) -> String {
    let mut events = String::from(
        "# HELP tally_projection_lag_events Events of the projection's subjects not yet applied.\n\
         # TYPE tally_projection_lag_events gauge\n",
    );
    let mut seconds = String::from(
        "# HELP tally_projection_lag_seconds Seconds since a projection that is behind last applied a batch.\n\
         # TYPE tally_projection_lag_seconds gauge\n",
    );
    for projection in &lag.projections {
        let Ok(Ok(behind)) =
            tokio::time::timeout(CHECK_TIMEOUT, lag.events_behind(projection)).await
        else {
            continue;
        };
        let idle_s: f64 = if behind == 0 {
            0.0
        } else {
            sqlx::query_scalar(
                "SELECT extract(epoch FROM now() - updated_at)::float8
                 FROM projection_checkpoints WHERE projection = $1",
            )
            .bind(projection)
            .fetch_optional(pool)
            .await
            .ok()
            .flatten()
            .unwrap_or(0.0)
        };
        events.push_str(&format!(
            "tally_projection_lag_events{{projection=\"{projection}\"}} {behind}\n"
        ));
        seconds.push_str(&format!(
            "tally_projection_lag_seconds{{projection=\"{projection}\"}} {idle_s}\n"
        ));
    }
    events + &seconds
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
