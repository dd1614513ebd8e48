//! Who may read what: every `/v1` route needs a valid bearer token (`accounts:read`, or
//! `audit:read` under `/v1/audit`), a token bound to an owner sees only that owner's accounts
//! and their transfers, transactions and holds (never the ledger as a whole: totals, system
//! accounts), and each token (or, before one is known, each client address) has a
//! request rate. Health, readiness, metrics and the OpenAPI document stay open.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use platform::auth::{KeyedLimiter, Scope, Throttled, TokenVerifier, bearer_token};

use crate::problem::ApiError;

pub struct Access {
    verifier: TokenVerifier,
    /// Per token subject; `None` when unlimited.
    tokens: Option<Arc<KeyedLimiter>>,
    /// Per client address, for requests without a valid token. Apart from `tokens`, so that a
    /// flood from many addresses (which needs no token at all) cannot crowd out token holders.
    addresses: Option<Arc<KeyedLimiter>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("verifier", &self.verifier)
            .field("tokens", &self.tokens)
            .field("addresses", &self.addresses)
            .finish()
    }
}

impl Access {
    /// `per_second` requests per token (or address) on average, bursts of `burst`, at most
    /// `keys_max` tokens and `keys_max` addresses tracked at once; `per_second` 0: no limit.
    pub fn new(verifier: TokenVerifier, per_second: u32, burst: u32, keys_max: usize) -> Self {
        let limiter = || KeyedLimiter::new(per_second, burst, keys_max).map(Arc::new);
        Access {
            verifier,
            tokens: limiter(),
            addresses: limiter(),
        }
    }

    /// `tally_rate_limiter_keys{kind="token"|"address"}` on `registry`.
    pub fn register_metrics(
        &self,
        registry: &prometheus::Registry,
    ) -> Result<(), platform::metrics::MetricsError> {
        let limiters = [("token", &self.tokens), ("address", &self.addresses)]
            .into_iter()
            .filter_map(|(kind, limiter)| Some((kind, Arc::clone(limiter.as_ref()?))))
            .collect();
        platform::auth::register_keys_gauge(registry, limiters)
    }

    fn throttle(limiter: Option<&KeyedLimiter>, key: String) -> Result<(), ApiError> {
        let Some(limiter) = limiter else {
            return Ok(());
        };
        limiter
            .check(&key)
            .map_err(|throttled: Throttled| ApiError::RateLimited {
                retry_after_s: throttled.retry_after().as_secs().max(1),
            })
    }
}

/// The rate key of a client address: an IPv6 client is keyed by its /64, which one subscriber
/// usually holds whole (keyed by address, it could take 2^64 fresh buckets).
fn address_key(address: IpAddr) -> String {
    match address.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !u128::from(u64::MAX);
            format!("{}/64", std::net::Ipv6Addr::from(prefix))
        }
    }
}

/// The scope a path needs.
fn required_scope(path: &str) -> Scope {
    if path.starts_with("/v1/audit/") || path.starts_with("/v1/ops/") {
        Scope::AuditRead
    } else {
        Scope::AccountsRead
    }
}

/// Paths that span owners: a token bound to one owner may not read them.
fn spans_owners(path: &str) -> bool {
    path.starts_with("/v1/audit/")
        || path.starts_with("/v1/ops/")
        || path == "/v1/totals"
        || path == "/v1/system-accounts"
        || path.starts_with("/v1/commands/")
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
        .map(|c| address_key(c.0.ip()))
        .unwrap_or_default();
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = match bearer_token(header).and_then(|t| access.verifier.verify(t)) {
        Ok(principal) => principal,
        Err(error) => {
            // Guessing tokens costs the same rate as using one.
            if let Err(limited) = Access::throttle(access.addresses.as_deref(), address) {
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
        && let Err(limited) = Access::throttle(access.tokens.as_deref(), principal.subject.clone())
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
        assert!(spans_owners("/v1/system-accounts"));
        assert!(!spans_owners("/v1/accounts/a/holds"));
        assert!(!spans_owners("/v1/transactions/x"));
        assert!(!spans_owners("/v1/accounts/a/transfers"));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let key = |a: &str| a.parse().map(address_key).ok();
        assert_eq!(key("192.0.2.7").as_deref(), Some("192.0.2.7"));
        assert_eq!(key("::ffff:192.0.2.7").as_deref(), Some("192.0.2.7"));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"),);
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }
}
