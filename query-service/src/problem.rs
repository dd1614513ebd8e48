//! The one HTTP error type: RFC 7807 `application/problem+json` with a stable `code` from
//! `domain::ErrorCode` (the one list of wire codes, `docs/errors.md`). Internal details are
//! logged, never sent.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::ErrorCode;
use event_store::StoreError;
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
    /// The token holds as many change feeds open as it may (HTTP 429, `rate_limited`).
    #[error("{detail}")]
    TooManyFeeds { detail: String },
    /// This instance is at a capacity limit of its own (HTTP 503, `unavailable`).
    #[error("{detail}")]
    Busy { detail: String },
    /// PostgreSQL is down or refuses work for now (HTTP 503), as the event store classifies
    /// it: the same outage is `unavailable` to a writer and to a reader.
    #[error("a dependency is unavailable")]
    Unavailable(#[source] StoreError),
    /// A bug (HTTP 500): a database failure that is no outage (a read cannot lose a write race,
    /// so even a `StoreError::Conflict` here is one), or a broken invariant of our own.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
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
        ApiError::from(event_store::classify(error))
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        if error.is_unavailable() {
            ApiError::Unavailable(error)
        } else {
            ApiError::Internal(Box::new(error))
        }
    }
}

impl ApiError {
    /// The one mapping onto the wire: the code, the HTTP status and the problem's title.
    pub fn wire(&self) -> (ErrorCode, StatusCode, &'static str) {
        match self {
            ApiError::NotFound { .. } => (ErrorCode::NotFound, StatusCode::NOT_FOUND, "Not found"),
            ApiError::BadRequest { .. } => (
                ErrorCode::BadRequest,
                StatusCode::BAD_REQUEST,
                "Bad request",
            ),
            ApiError::NotYetConsistent { .. } => (
                ErrorCode::NotYetConsistent,
                StatusCode::CONFLICT,
                "Read model not yet at the requested write",
            ),
            ApiError::Corrupt { .. } => (
                ErrorCode::CorruptHistory,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Stored history cannot be folded",
            ),
            ApiError::Unauthenticated { .. } => (
                ErrorCode::Unauthenticated,
                StatusCode::UNAUTHORIZED,
                "Unauthenticated",
            ),
            ApiError::Forbidden { .. } => {
                (ErrorCode::Forbidden, StatusCode::FORBIDDEN, "Forbidden")
            }
            ApiError::RateLimited { .. } | ApiError::TooManyFeeds { .. } => (
                ErrorCode::RateLimited,
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests",
            ),
            ApiError::Unavailable(_) | ApiError::Busy { .. } => (
                ErrorCode::Unavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                "Service unavailable",
            ),
            ApiError::Internal(_) => (
                ErrorCode::Internal,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error",
            ),
        }
    }
}

/// An error and its causes, `outer: inner: innermost`, for the one log line at the edge.
struct Chain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
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
    #[schema(value_type = String)]
    code: ErrorCode,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status, title) = self.wire();
        match &self {
            // An outage, expected to end by itself (PostgreSQL restarting, failing over): worth
            // a warning, not an error page for every request it refuses.
            ApiError::Unavailable(source) => {
                tracing::warn!(error = %Chain(source), %code, "request failed");
            }
            ApiError::Internal(source) => {
                tracing::error!(error = %Chain(source.as_ref()), %code, "request failed");
            }
            ApiError::Corrupt { detail } => {
                tracing::error!(%detail, %code, "stored history cannot be folded");
            }
            _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each variant: the match in `wire` names them all, so a new one is added here too.
    fn every_error() -> Vec<ApiError> {
        let detail = || "x".to_owned();
        vec![
            ApiError::NotFound { what: detail() },
            ApiError::BadRequest { detail: detail() },
            ApiError::NotYetConsistent { detail: detail() },
            ApiError::Corrupt { detail: detail() },
            ApiError::Unauthenticated { detail: detail() },
            ApiError::Forbidden { detail: detail() },
            ApiError::RateLimited { retry_after_s: 1 },
            ApiError::Unavailable(StoreError::Unavailable(sqlx::Error::PoolTimedOut)),
            ApiError::Internal(Box::new(StoreError::corrupt("x"))),
        ]
    }

    #[test]
    fn outages_are_unavailable_and_the_rest_internal() {
        let code = |e: sqlx::Error| ApiError::from(e).wire().0;
        assert_eq!(code(sqlx::Error::PoolTimedOut), ErrorCode::Unavailable);
        assert_eq!(code(sqlx::Error::PoolClosed), ErrorCode::Unavailable);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(code(sqlx::Error::Io(refused)), ErrorCode::Unavailable);
        assert_eq!(code(sqlx::Error::RowNotFound), ErrorCode::Internal);
        assert_eq!(
            ApiError::from(StoreError::Conflict).wire().0,
            ErrorCode::Internal
        );
    }

    /// `docs/errors.md` gives each code the HTTP API answers with its status, and no status to
    /// the codes it never answers.
    #[test]
    fn docs_give_each_code_its_http_status() {
        let docs = include_str!("../../docs/errors.md");
        let rows: Vec<Vec<&str>> = docs
            .lines()
            .filter(|line| line.starts_with("| `"))
            .map(|line| line.trim_matches('|').split('|').map(str::trim).collect())
            .collect();
        let http_cell = |code: ErrorCode| {
            let name = format!("`{}`", code.as_str());
            let row = rows.iter().find(|row| row.first() == Some(&name.as_str()));
            row.and_then(|row| row.get(1)).copied()
        };
        let answered: Vec<(ErrorCode, StatusCode)> = every_error()
            .iter()
            .map(|e| {
                let (code, status, _) = e.wire();
                (code, status)
            })
            .collect();
        for code in ErrorCode::ALL {
            let expected = match answered.iter().find(|(c, _)| *c == code) {
                Some((_, status)) => status.as_u16().to_string(),
                None => "—".to_owned(),
            };
            assert_eq!(
                http_cell(code),
                Some(expected.as_str()),
                "docs/errors.md, HTTP column of `{code}`"
            );
        }
    }

    #[test]
    fn problem_code_is_the_wire_string() {
        let response = ApiError::Corrupt { detail: "x".into() }.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = Problem {
            kind: "about:blank",
            title: "t",
            status: 500,
            detail: String::new(),
            code: ErrorCode::CorruptHistory,
        };
        let json = serde_json::to_value(&body).ok();
        assert_eq!(
            json.as_ref().and_then(|j| j["code"].as_str()),
            Some("corrupt_history")
        );
    }
}
