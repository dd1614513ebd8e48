//! Who may read what: every `/v1` route needs a valid bearer token (`accounts:read`, or
//! `audit:read` under `/v1/audit`), a token bound to an owner sees only that owner's accounts
//! and their transfers, and each token (or, before one is known, each client address) has a
//! request rate. Health, readiness, metrics and the OpenAPI document stay open.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use platform::auth::{Scope, TokenVerifier, bearer_token};

use crate::problem::ApiError;

pub struct Access {
    verifier: TokenVerifier,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

impl Access {
    /// `per_second` requests per token (or address) on average, bursts of `burst`; 0: no limit.
    pub fn new(verifier: TokenVerifier, per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Access { verifier, limiter }
    }

    fn throttle(&self, key: String) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited {
                retry_after_s: wait.as_secs().max(1),
            }
        })
    }
}

/// The scope a path needs.
fn required_scope(path: &str) -> Scope {
    if path.starts_with("/v1/audit/") {
        Scope::AuditRead
    } else {
        Scope::AccountsRead
    }
}

/// Paths that span owners: a token bound to one owner may not read them.
fn spans_owners(path: &str) -> bool {
    path.starts_with("/v1/audit/") || path == "/v1/totals" || path.starts_with("/v1/commands/")
}

/// Middleware on the `/v1` routes: authenticates, throttles, checks the scope, and hands the
/// `Principal` to the handlers as a request extension.
pub async fn authenticate(
    State(access): State<Arc<Access>>,
    mut request: Request,
    next: Next,
) -> Response {
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = match bearer_token(header).and_then(|t| access.verifier.verify(t)) {
        Ok(principal) => principal,
        Err(error) => {
            // Guessing tokens costs the same rate as using one.
            if let Err(limited) = access.throttle(format!("addr:{address}")) {
                return limited.into_response();
            }
            return ApiError::Unauthenticated {
                detail: error.to_string(),
            }
            .into_response();
        }
    };
    // Operators are not throttled, as on the command side: they act for everyone.
    if !principal.is_admin()
        && let Err(limited) = access.throttle(format!("sub:{}", principal.subject))
    {
        return limited.into_response();
    }
    let path = request.uri().path();
    let scope = required_scope(path);
    if !principal.allows(scope) {
        return ApiError::Forbidden {
            detail: format!("this needs scope {scope}"),
        }
        .into_response();
    }
    if principal.owner.is_some() && spans_owners(path) {
        return ApiError::Forbidden {
            detail: "a token bound to an owner reads only that owner's accounts and transfers"
                .into(),
        }
        .into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_needs_its_own_scope_and_spans_owners() {
        assert_eq!(
            required_scope("/v1/audit/account/a/events"),
            Scope::AuditRead
        );
        assert_eq!(required_scope("/v1/accounts/a"), Scope::AccountsRead);
        assert!(spans_owners("/v1/totals"));
        assert!(spans_owners("/v1/commands/x"));
        assert!(!spans_owners("/v1/accounts/a/transfers"));
    }
}
