//! The one HTTP error type: RFC 7807 `application/problem+json` with a stable `code`. Internal
//! details are logged, never sent.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{detail}")]
    BadRequest { detail: String },
    /// Read-your-writes wait expired (HTTP 409).
    #[error("{detail}")]
    NotYetConsistent { detail: String },
    /// Stored history the domain cannot fold (HTTP 500): tampering or a bug, never input.
    #[error("{detail}")]
    Corrupt { detail: String },
    /// No valid bearer token (HTTP 401).
    #[error("{detail}")]
    Unauthenticated { detail: String },
    /// The token does not allow this (HTTP 403).
    #[error("{detail}")]
    Forbidden { detail: String },
    /// Over the request rate (HTTP 429 with `Retry-After`).
    #[error("too many requests; retry in {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error("a dependency is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("internal error")]
    Internal(#[source] sqlx::Error),
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest {
            detail: format!("invalid query string: {}", rejection.body_text()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                ApiError::Unavailable(error)
            }
            other => ApiError::Internal(other),
        }
    }
}

/// RFC 7807 problem details, with Tally's stable `code`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    detail: String,
    /// `bad_request`, `unauthenticated`, `forbidden`, `not_found`, `not_yet_consistent`,
    /// `rate_limited`, `corrupt_history`, `unavailable` or `internal`.
    code: &'static str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title) = match &self {
            ApiError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found", "Not found"),
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request", "Bad request"),
            ApiError::NotYetConsistent { .. } => (
                StatusCode::CONFLICT,
                "not_yet_consistent",
                "Read model not yet at the requested write",
            ),
            ApiError::Corrupt { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "corrupt_history",
                "Stored history cannot be folded",
            ),
            ApiError::Unauthenticated { .. } => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Unauthenticated",
            ),
            ApiError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests",
            ),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        };
        if let ApiError::Unavailable(source) | ApiError::Internal(source) = &self {
            tracing::error!(error = %source, code, "request failed");
        }
        if let ApiError::Corrupt { detail } = &self {
            tracing::error!(%detail, code, "stored history cannot be folded");
        }
        let body = Problem {
            kind: "about:blank",
            title,
            status: status.as_u16(),
            detail: self.to_string(),
            code,
        };
        let mut response = (status, Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            ApiError::Unauthenticated { .. } => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RateLimited { retry_after_s } => {
                if let Ok(value) = HeaderValue::from_str(&retry_after_s.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
            }
            _ => {}
        }
        response
    }
}
