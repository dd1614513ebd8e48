//! Who may run which command: the bearer token on the message (authentication), the scope the
//! command needs, the `owner` claim on bodies, and the per-actor rate limit. Checked before the
//! body is even parsed, so an unauthenticated sender learns nothing about commands' shapes.

use async_nats::HeaderMap;
use domain::ErrorCode;
use domain::account::AccountCommand;
use platform::auth::{
    AuthError, KeyedLimiter, Principal, RATE_KEYS_MAX_DEFAULT, Scope, Throttled, TokenVerifier,
    bearer_token,
};
use serde_json::json;

use uuid::Uuid;

use crate::incoming::{Command, IncomingCommand};
use crate::rejection::Rejection;
use crate::schema_check::SchemaRegistry;

pub const HEADER_AUTHORIZATION: &str = "Authorization";

pub struct Access {
    verifier: TokenVerifier,
    /// Per actor (token subject); `None` when unlimited. Idle actors are dropped and at most
    /// [`RATE_KEYS_MAX_DEFAULT`] are tracked at once (beyond, a new actor is `rate_limited`
    /// until idle ones are dropped): subjects come only from valid tokens, but a token issuer
    /// may mint without end.
    limiter: Option<KeyedLimiter>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("verifier", &self.verifier)
            .field("rate_limited", &self.limiter.is_some())
            .finish()
    }
}

/// The scope a command needs. The process manager's steps need `admin`: they move money on
/// the strength of a transfer already accepted.
pub fn required_scope(aggregate: &str, command: &str) -> Scope {
    match (aggregate, command) {
        ("transfer", "request") => Scope::TransfersWrite,
        ("account", "debit" | "credit" | "refund" | "settle") | ("transfer", _) => Scope::Admin,
        _ => Scope::AccountsWrite,
    }
}

impl Access {
    /// `per_second` commands per actor on average, bursts of `burst`; 0 means unlimited.
    pub fn new(verifier: TokenVerifier, per_second: u32, burst: u32) -> Self {
        Access {
            verifier,
            limiter: KeyedLimiter::new(per_second, burst, RATE_KEYS_MAX_DEFAULT),
        }
    }

    /// The sender, if its token verifies (no scope or rate checked).
    pub fn authenticate(&self, headers: Option<&HeaderMap>) -> Result<Principal, Rejection> {
        let header = headers
            .and_then(|h| h.get(HEADER_AUTHORIZATION))
            .map(|v| v.as_str());
        bearer_token(header)
            .and_then(|token| self.verifier.verify(token))
            .map_err(unauthenticated)
    }

    /// `rejection`, found before the sender was known (a malformed command id, a subject that
    /// names no command), if the sender is authenticated; otherwise the `unauthenticated`
    /// refusal, which writes nothing. So a sender without a valid token learns nothing of
    /// the shapes commands take and leaves no trace, even in the command log.
    pub fn refuse_before_admission(
        &self,
        headers: Option<&HeaderMap>,
        rejection: Rejection,
    ) -> Rejection {
        match self.authenticate(headers) {
            Ok(_) => rejection,
            Err(refusal) => refusal,
        }
    }

    /// The sender of a command to `<aggregate>.<command>`, if it may send it now.
    pub fn admit(
        &self,
        headers: Option<&HeaderMap>,
        aggregate: &str,
        command: &str,
    ) -> Result<Principal, Rejection> {
        let principal = self.authenticate(headers)?;
        let scope = required_scope(aggregate, command);
        if !principal.allows(scope) {
            return Err(Rejection::new(
                ErrorCode::Forbidden,
                format!("`{aggregate}.{command}` needs scope {scope}"),
            )
            .with_details(json!({"scope": scope.as_str()})));
        }
        // Operators and the process manager are not throttled: they act for everyone.
        if let Some(limiter) = &self.limiter
            && !principal.is_admin()
            && let Err(throttled) = limiter.check(&principal.subject)
        {
            let retry_after_ms = u64::try_from(throttled.retry_after().as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            let message = match throttled {
                Throttled::TooFast { .. } => format!(
                    "too many commands from {}; retry in {retry_after_ms} ms",
                    principal.subject
                ),
                Throttled::Crowded { .. } => {
                    format!("too many actors at once; retry in {retry_after_ms} ms")
                }
            };
            return Err(Rejection::new(ErrorCode::RateLimited, message)
                .with_details(json!({"retry_after_ms": retry_after_ms})));
        }
        Ok(principal)
    }
}

/// A token bound to an owner opens accounts for that owner only.
pub fn check_body(principal: &Principal, command: &Command) -> Result<(), Rejection> {
    if let (Some(owner), Command::Account(AccountCommand::Open(open))) = (&principal.owner, command)
        && &open.owner != owner
    {
        return Err(Rejection::new(
            ErrorCode::Forbidden,
            "this token may open accounts only for its own owner",
        ));
    }
    Ok(())
}

fn unauthenticated(error: AuthError) -> Rejection {
    Rejection::new(ErrorCode::Unauthenticated, error.to_string())
}

/// Refusals of who is asking rather than of what: never recorded (nothing is written), and a
/// durable command refused for its rate is tried again later rather than answered.
pub fn is_access_refusal(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unauthenticated | ErrorCode::Forbidden | ErrorCode::RateLimited
    )
}

/// Admits one command message: who sent it and whether they may (before anything else), then
/// its body.
#[allow(clippy::too_many_arguments)]
pub fn admit(
    access: &Access,
    command_id: Uuid,
    aggregate: &str,
    name: &str,
    headers: Option<&HeaderMap>,
    body: &[u8],
    schemas: &SchemaRegistry,
) -> Result<IncomingCommand, Rejection> {
    let principal: Principal = access.admit(headers, aggregate, name)?;
    let mut incoming = crate::incoming::parse(command_id, aggregate, name, headers, body, schemas)?;
    check_body(&principal, &incoming.command)?;
    incoming.actor = principal.subject.clone();
    incoming.owner = principal.owner;
    Ok(incoming)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_command_needs_its_scope() {
        assert_eq!(required_scope("account", "open"), Scope::AccountsWrite);
        assert_eq!(required_scope("account", "withdraw"), Scope::AccountsWrite);
        assert_eq!(required_scope("transfer", "request"), Scope::TransfersWrite);
        assert_eq!(required_scope("account", "credit"), Scope::Admin);
        assert_eq!(required_scope("transfer", "record_credit"), Scope::Admin);
        assert_eq!(required_scope("transfer", "fail"), Scope::Admin);
    }
}
