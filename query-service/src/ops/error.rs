//! The ops endpoints' errors: the API's own, plus a NATS dependency that cannot answer, which
//! `ApiError` (built around PostgreSQL outages) has no variant for.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::ErrorCode;

use crate::problem::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Api(#[from] ApiError),
    /// NATS could not answer (HTTP 503 `unavailable`); the detail says what to do about it.
    #[error("{0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for OpsError {
    fn from(error: sqlx::Error) -> Self {
        OpsError::Api(ApiError::from(error))
    }
}

impl IntoResponse for OpsError {
    fn into_response(self) -> Response {
        match self {
            OpsError::Api(error) => error.into_response(),
            OpsError::Unavailable(detail) => {
                tracing::warn!(%detail, code = %ErrorCode::Unavailable, "request failed");
                // The same problem shape and code as `ApiError::Unavailable`, with a detail that
                // names the cause (a missing NATS permission is a deployment fix).
                let body = serde_json::json!({
                    "type": "about:blank",
                    "title": "Service unavailable",
                    "status": 503,
                    "detail": detail,
                    "code": ErrorCode::Unavailable,
                });
                let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/problem+json"),
                );
                response
            }
        }
    }
}
