//! Who may run which command: the bearer token on the message (authentication), the scope the
//! command needs, the `owner` claim on bodies, and the per-actor rate limit. Checked before the
//! body is even parsed, so an unauthenticated sender learns nothing about commands' shapes.

use async_nats::HeaderMap;
use domain::ErrorCode;
use domain::account::AccountCommand;
use domain::ledger::{HoldCommand, SystemAccount, SystemPurpose};
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
        ("transfer", "request") | ("transaction", "post") => Scope::TransfersWrite,
        ("hold", "place" | "capture" | "void") => Scope::TransfersWrite,
        ("account", "debit" | "credit" | "refund" | "settle" | "set_limits")
        | ("transfer" | "hold", _) => Scope::Admin,
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
        self.throttle(&principal)?;
        Ok(principal)
    }

    /// The sender of a batch, if its token verifies. Its commands then count against its
    /// rate as that many commands ([`Access::throttle_batch`]), and each is checked for its
    /// own scope (`required_scope`).
    pub fn admit_batch(&self, headers: Option<&HeaderMap>) -> Result<Principal, Rejection> {
        let principal = self.authenticate(headers)?;
        Ok(principal)
    }

    /// Counts a batch's `commands` against its sender's rate, as that many commands.
    pub fn throttle_batch(&self, principal: &Principal, commands: usize) -> Result<(), Rejection> {
        let n = u32::try_from(commands).unwrap_or(u32::MAX);
        self.throttle_n(
            principal,
            std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN),
        )
    }

    fn throttle(&self, principal: &Principal) -> Result<(), Rejection> {
        self.throttle_n(principal, std::num::NonZeroU32::MIN)
    }

    fn throttle_n(&self, principal: &Principal, n: std::num::NonZeroU32) -> Result<(), Rejection> {
        // Operators and the process manager are not throttled: they act for everyone.
        if let Some(limiter) = &self.limiter
            && !principal.is_admin()
            && let Err(throttled) = limiter.check_n(&principal.subject, n)
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
                Throttled::TooMany { burst } => format!(
                    "{n} commands at once exceed the burst of {burst} allowed to {}; send smaller batches",
                    principal.subject
                ),
            };
            return Err(Rejection::new(ErrorCode::RateLimited, message)
                .with_details(json!({"retry_after_ms": retry_after_ms})));
        }
        Ok(())
    }
}

/// The scope moving money through system account `id` needs: through `@world` (in or out of
/// the ledger) what a deposit or withdrawal needs; out of `@fees` or `@exchange`, or through
/// `@transit` (the saga's own), `admin`.
fn system_scope(id: &str, drawn_from: bool) -> Option<Scope> {
    let system: SystemAccount = id.parse().ok()?;
    match (system.purpose, drawn_from) {
        (SystemPurpose::World, _) => Some(Scope::AccountsWrite),
        (SystemPurpose::Transit, _) | (SystemPurpose::Fees | SystemPurpose::Exchange, true) => {
            Some(Scope::Admin)
        }
        (SystemPurpose::Fees | SystemPurpose::Exchange, false) => None,
    }
}

/// What the body asks of the sender beyond the subject's scope: moving money through system
/// accounts (`system_scope`).
fn body_scopes(command: &Command) -> Vec<(Scope, String)> {
    match command {
        Command::Transaction(post) => post
            .legs
            .iter()
            .flat_map(|leg| {
                [
                    system_scope(&leg.from, true).map(|s| (s, leg.from.clone())),
                    system_scope(&leg.to, false).map(|s| (s, leg.to.clone())),
                ]
            })
            .flatten()
            .collect(),
        Command::Hold(HoldCommand::Capture(capture)) => system_scope(&capture.to, false)
            .map(|s| (s, capture.to.clone()))
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

/// A token bound to an owner opens accounts for that owner only; money through system accounts
/// needs the scopes `body_scopes` names.
pub fn check_body(principal: &Principal, command: &Command) -> Result<(), Rejection> {
    for (scope, account) in body_scopes(command) {
        if !principal.allows(scope) {
            return Err(Rejection::new(
                ErrorCode::Forbidden,
                format!("moving money through `{account}` needs scope {scope}"),
            )
            .with_details(json!({"scope": scope.as_str(), "account_id": account})));
        }
    }
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
        assert_eq!(required_scope("transaction", "post"), Scope::TransfersWrite);
        assert_eq!(required_scope("hold", "capture"), Scope::TransfersWrite);
        assert_eq!(required_scope("hold", "expire"), Scope::Admin);
        assert_eq!(required_scope("account", "set_limits"), Scope::Admin);
    }
}
