//! The HTTP router: routes plus the layers every request passes through.

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use platform::ops_http::Readiness;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

#[derive(Debug, Clone)]
pub struct Limits {
    pub request_timeout: Duration,
    pub body_max_bytes: usize,
}

pub fn build(readiness: Readiness, limits: &Limits) -> Router {
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
        .route("/v1/transfers/{transfer_id}", get(crate::transfers::get))
        .route("/v1/totals", get(crate::accounts::totals))
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
        .route("/openapi.json", get(crate::openapi::serve))
        .with_state(readiness.pool.clone());
    platform::ops_http::router(readiness)
        .merge(api)
        .layer(CompressionLayer::new())
        .layer(RequestBodyLimitLayer::new(limits.body_max_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(TraceLayer::new_for_http())
}
