//! The HTTP router: routes plus the layers every request passes through.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::routing::get;
use platform::ops_http::Readiness;
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

#[derive(Debug, Clone)]
pub struct Limits {
    pub request_timeout: Duration,
    pub body_max_bytes: usize,
    /// Browser origins allowed by CORS; empty: no CORS headers at all.
    pub cors_origins: Vec<String>,
}

/// Headers on every response: the API serves JSON to programs, never pages to frame or sniff.
const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("cache-control", "no-store"),
];

/// What the handlers share: the middleware's state and the extensions handlers read.
#[derive(Debug)]
pub struct Shared {
    pub access: Arc<crate::access::Access>,
    pub metrics: crate::http_metrics::HttpMetrics,
    pub read_cache: Arc<crate::read_cache::ReadCache>,
    pub waits: Arc<crate::consistency_waits::ConsistencyWaits>,
    pub feeds: crate::feed::Feeds,
    pub ops: Arc<crate::ops::OpsContext>,
}

pub fn build(readiness: Readiness, limits: &Limits, shared: Shared) -> Router {
    let Shared {
        access,
        metrics,
        read_cache,
        waits,
        feeds,
        ops,
    } = shared;
    let api = Router::new()
        .route("/v1/commands/{command_id}", get(crate::commands::get))
        .route("/v1/accounts", get(crate::accounts::list))
        .route("/v1/accounts/{account_id}", get(crate::accounts::get))
        .route(
            "/v1/accounts/{account_id}/entries",
            get(crate::accounts::entries),
        )
        .route(
            "/v1/accounts/{account_id}/transfers",
            get(crate::transfers::of_account),
        )
        .route(
            "/v1/accounts/{account_id}/statement",
            get(crate::statement::statement),
        )
        .route(
            "/v1/accounts/{account_id}/holds",
            get(crate::holds::of_account),
        )
        .route(
            "/v1/accounts/{account_id}/feed",
            get(crate::feed::account_feed),
        )
        .route("/v1/feed", get(crate::feed::owner_feed))
        .route("/v1/transfers/{transfer_id}", get(crate::transfers::get))
        .route(
            "/v1/transactions/{transaction_id}",
            get(crate::transactions::get),
        )
        .route("/v1/holds/{hold_id}", get(crate::holds::get))
        .route("/v1/totals", get(crate::books::totals))
        .route("/v1/system-accounts", get(crate::books::system_accounts))
        .route(
            "/v1/audit/correlations/{correlation_id}/events",
            get(crate::audit_flows::events),
        )
        .route(
            "/v1/audit/{aggregate_type}/{aggregate_id}/events",
            get(crate::audit::events),
        )
        .route(
            "/v1/audit/{aggregate_type}/{aggregate_id}/state",
            get(crate::audit_state::state),
        )
        .merge(crate::ops::routes())
        // Route layers run outermost last added: authentication first, then the input check.
        .route_layer(axum::middleware::from_fn(crate::input::reject_unusable))
        .route_layer(axum::middleware::from_fn_with_state(
            access,
            crate::access::authenticate,
        ))
        .layer(axum::Extension(read_cache))
        .layer(axum::Extension(waits))
        .layer(axum::Extension(feeds))
        .layer(axum::Extension(ops))
        .route("/openapi.json", get(crate::openapi::serve))
        .merge(crate::console::routes())
        .with_state(readiness.pool.clone());
    let origins: Vec<HeaderValue> = limits
        .cors_origins
        .iter()
        .filter(|o| !o.trim().is_empty())
        .filter_map(|o| HeaderValue::from_str(o.trim()).ok())
        .collect();
    let cors = (!origins.is_empty()).then(|| {
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET])
            .allow_headers([
                header::AUTHORIZATION,
                HeaderName::from_static("tally-consistency-token"),
                HeaderName::from_static("tally-wait-ms"),
            ])
    });
    // The tower-http middleware composed statically into one layer rather than one
    // `Router::layer` each: every `Router::layer` boxes every route again, and each box is
    // cloned and its future allocated on every request.
    platform::ops_http::router(readiness)
        .merge(api)
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::http_metrics::record,
        ))
        .layer(axum::middleware::map_response(security_headers))
        .layer(
            ServiceBuilder::new()
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        .on_failure(on_failure),
                )
                .layer(RequestBodyLimitLayer::new(limits.body_max_bytes))
                .layer(CompressionLayer::new())
                .option_layer(cors)
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    limits.request_timeout,
                )),
        )
}

/// A server error, once. A 503 is an outage that others already report: `/readyz` logs each
/// change of readiness, and `problem` logs each request refused as `unavailable` (WARN). Logging
/// every 503 at ERROR here (tower-http's default) put one ERROR line per readiness probe into
/// the logs for the whole of an expected outage.
fn on_failure(
    class: tower_http::classify::ServerErrorsFailureClass,
    latency: Duration,
    _span: &tracing::Span,
) {
    let latency_ms = latency.as_millis() as u64;
    match class {
        tower_http::classify::ServerErrorsFailureClass::StatusCode(
            StatusCode::SERVICE_UNAVAILABLE,
        ) => tracing::debug!(latency_ms, "service unavailable"),
        other => tracing::error!(classification = %other, latency_ms, "response failed"),
    }
}

async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        // The console's pages carry their own (stricter than none, looser than the API's) policy.
        if name == "content-security-policy" && headers.contains_key(name) {
            continue;
        }
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    response
}

/// The request's span, continuing the caller's W3C trace when it sent a `traceparent`.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let trace_id = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(platform::trace_context::trace_id)
        .unwrap_or_default();
    let span = tracing::info_span!(
        "http_request",
        method = %request.method(),
        path = %request.uri().path(),
        trace_id = %trace_id,
    );
    platform::telemetry::continue_trace(
        &span,
        request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    span
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tower_http::classify::ServerErrorsFailureClass;

    use super::*;

    /// Counts ERROR events; enough of a subscriber for `on_failure`, which opens no span.
    #[derive(Default)]
    struct Errors(AtomicUsize);

    impl tracing::Subscriber for Errors {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            if *event.metadata().level() == tracing::Level::ERROR {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    fn errors_logged(class: ServerErrorsFailureClass) -> usize {
        let errors = std::sync::Arc::new(Errors::default());
        tracing::subscriber::with_default(std::sync::Arc::clone(&errors), || {
            on_failure(class, Duration::from_millis(1), &tracing::Span::none());
        });
        errors.0.load(Ordering::Relaxed)
    }

    /// A readiness probe failing through an outage is no error; a 500 still is.
    #[test]
    fn a_503_is_not_logged_at_error_but_a_500_is() {
        let status = ServerErrorsFailureClass::StatusCode;
        assert_eq!(errors_logged(status(StatusCode::SERVICE_UNAVAILABLE)), 0);
        assert_eq!(errors_logged(status(StatusCode::INTERNAL_SERVER_ERROR)), 1);
    }
}
