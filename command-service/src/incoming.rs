//! Turning a NATS message (subject, headers, body) into a command, or into the rejection that
//! explains why not. Shared by the request/reply and the durable paths.

use async_nats::HeaderMap;
use domain::ErrorCode;
use domain::account::AccountCommand;
use domain::metadata::ANONYMOUS_ACTOR;
use uuid::Uuid;

use crate::rejection::Rejection;
use crate::schema_check::SchemaRegistry;

/// Design §3: command bodies are at most 64 KiB.
pub const BODY_MAX_BYTES: usize = 64 * 1024;

pub const HEADER_COMMAND_ID: &str = "Tally-Command-Id";
pub const HEADER_EXPECTED_VERSION: &str = "Tally-Expected-Version";
pub const HEADER_TRACEPARENT: &str = "traceparent";

/// A command ready for the executor.
#[derive(Debug, Clone)]
pub struct IncomingCommand {
    pub command_id: Uuid,
    pub command: AccountCommand,
    pub actor: String,
    pub trace_id: Option<String>,
    /// The client's `traceparent`, kept whole when well formed.
    pub traceparent: Option<String>,
    pub expected_version: Option<u64>,
}

impl IncomingCommand {
    pub fn aggregate_type(&self) -> &'static str {
        "account"
    }

    pub fn aggregate_id(&self) -> &str {
        self.command.account_id()
    }
}

/// The command id: the client's `Tally-Command-Id` (or `Nats-Msg-Id` on the durable path), else
/// `fallback`. A malformed id is an error, never silently replaced.
pub fn command_id(headers: Option<&HeaderMap>, fallback: Uuid) -> Result<Uuid, Rejection> {
    let raw = headers.and_then(|h| {
        h.get(HEADER_COMMAND_ID)
            .or_else(|| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned())
    });
    match raw {
        None => Ok(fallback),
        Some(raw) => Uuid::parse_str(raw.trim()).map_err(|_| {
            Rejection::new(
                ErrorCode::SchemaViolation,
                format!("header {HEADER_COMMAND_ID} must be a UUID, got `{raw}`"),
            )
            .with_details(serde_json::json!({"header": HEADER_COMMAND_ID}))
        }),
    }
}

/// `<prefix>.<kind>.<aggregate>.<command>` -> (aggregate, command).
pub fn split_subject<'a>(subject: &'a str, prefix: &str, kind: &str) -> Option<(&'a str, &'a str)> {
    let rest = subject
        .strip_prefix(prefix)?
        .strip_prefix('.')?
        .strip_prefix(kind)?
        .strip_prefix('.')?;
    let (aggregate, command) = rest.split_once('.')?;
    (!command.contains('.')).then_some((aggregate, command))
}

/// Parses and validates one command message.
pub fn parse(
    command_id: Uuid,
    aggregate: &str,
    name: &str,
    headers: Option<&HeaderMap>,
    body: &[u8],
    schemas: &SchemaRegistry,
) -> Result<IncomingCommand, Rejection> {
    if body.len() > BODY_MAX_BYTES {
        return Err(Rejection::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "body is {} bytes; the limit is {BODY_MAX_BYTES}",
                body.len()
            ),
        )
        .with_details(serde_json::json!({"limit_bytes": BODY_MAX_BYTES})));
    }
    if !schemas.knows(aggregate, name) {
        return Err(Rejection::new(
            ErrorCode::UnknownCommand,
            format!("unknown command `{aggregate}.{name}`"),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        Rejection::new(
            ErrorCode::InvalidJson,
            format!("body is not valid JSON: {e}"),
        )
    })?;
    schemas.check(aggregate, name, &value)?;
    let command = AccountCommand::from_json(name, value)
        .map_err(|e| Rejection::new(ErrorCode::SchemaViolation, e.to_string()))?;
    let expected_version = match headers.and_then(|h| h.get(HEADER_EXPECTED_VERSION)) {
        None => None,
        Some(raw) => Some(raw.as_str().trim().parse::<u64>().map_err(|_| {
            Rejection::new(
                ErrorCode::SchemaViolation,
                format!("header {HEADER_EXPECTED_VERSION} must be a non-negative integer"),
            )
        })?),
    };
    Ok(IncomingCommand {
        command_id,
        command,
        actor: ANONYMOUS_ACTOR.to_owned(),
        trace_id: headers.and_then(trace_id),
        traceparent: headers
            .filter(|h| trace_id(h).is_some())
            .and_then(|h| h.get(HEADER_TRACEPARENT))
            .map(|v| v.as_str().to_owned()),
        expected_version,
    })
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if well formed.
fn trace_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(HEADER_TRACEPARENT)?.as_str().to_owned();
    let mut parts = value.split('-');
    let (_version, trace, _span) = (parts.next()?, parts.next()?, parts.next()?);
    let valid = trace.len() == 32
        && trace.bytes().all(|b| b.is_ascii_hexdigit())
        && trace.bytes().any(|b| b != b'0');
    valid.then(|| trace.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_split_into_aggregate_and_command() {
        assert_eq!(
            split_subject("tally.cmd.account.deposit", "tally", "cmd"),
            Some(("account", "deposit"))
        );
        assert_eq!(split_subject("tally.cmd.account", "tally", "cmd"), None);
        assert_eq!(split_subject("tally.cmd.a.b.c", "tally", "cmd"), None);
        assert_eq!(split_subject("other.cmd.a.b", "tally", "cmd"), None);
    }

    #[test]
    fn traceparent_gives_the_trace_id() {
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER_TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        assert_eq!(
            trace_id(&headers).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        headers.insert(HEADER_TRACEPARENT, "garbage");
        assert_eq!(trace_id(&headers), None);
    }
}
