//! HTTP requests by route and status, and their latency, for `/metrics`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use platform::metrics::{LATENCY_BUCKETS_S, MetricsError, counter_vec, histogram_vec};
use prometheus::{HistogramVec, IntCounterVec, Registry};

#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
}

impl HttpMetrics {
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        Ok(HttpMetrics {
            requests: counter_vec(
                registry,
                "tally_http_requests_total",
                "HTTP requests by route template and status.",
                &["route", "status"],
            )?,
            seconds: histogram_vec(
                registry,
                "tally_http_request_duration_seconds",
                "HTTP request latency by route template.",
                &["route"],
                &LATENCY_BUCKETS_S,
            )?,
        })
    }
}

/// Middleware: the route label is the template (`/v1/accounts/{account_id}`), never the raw
/// path, so ids cannot grow the label set.
pub async fn record(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    metrics
        .seconds
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}
