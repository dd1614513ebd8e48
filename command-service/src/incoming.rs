//! Turning a NATS message (subject, headers, body) into a command, or into the rejection that
//! explains why not. Shared by the request/reply and the durable paths.

use async_nats::HeaderMap;
use domain::ErrorCode;
use domain::account::AccountCommand;
use domain::ledger::{HoldCommand, PostTransaction};
use domain::metadata::ANONYMOUS_ACTOR;
use domain::transfer::TransferCommand;
use uuid::Uuid;

use crate::rejection::Rejection;
use crate::schema_check::SchemaRegistry;

/// Command bodies are at most 64 KiB (`payload_too_large`, docs/errors.md).
pub const BODY_MAX_BYTES: usize = 64 * 1024;

pub const HEADER_COMMAND_ID: &str = "Tally-Command-Id";
pub const HEADER_EXPECTED_VERSION: &str = "Tally-Expected-Version";
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// The business flow a command belongs to (a process manager sets the transfer id).
pub const HEADER_CORRELATION_ID: &str = "Tally-Correlation-Id";
/// What caused the command (a process manager sets the event it reacted to).
pub const HEADER_CAUSATION_ID: &str = "Tally-Causation-Id";
/// Durable commands: the inbox their result is published to.
pub const HEADER_REPLY_TO: &str = "Tally-Reply-To";

/// A parsed command for one of the aggregates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Account(AccountCommand),
    Transfer(TransferCommand),
    Transaction(PostTransaction),
    Hold(HoldCommand),
}

impl Command {
    pub fn aggregate_type(&self) -> &'static str {
        match self {
            Command::Account(_) => "account",
            Command::Transfer(_) => "transfer",
            Command::Transaction(_) => "transaction",
            Command::Hold(_) => "hold",
        }
    }

    pub fn aggregate_id(&self) -> String {
        match self {
            Command::Account(c) => c.account_id().to_owned(),
            Command::Transfer(c) => c.transfer_id().to_string(),
            Command::Transaction(c) => c.transaction_id.to_string(),
            Command::Hold(c) => c.hold_id().to_string(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Command::Account(c) => c.name(),
            Command::Transfer(c) => c.name(),
            Command::Transaction(_) => "post",
            Command::Hold(c) => c.name(),
        }
    }

    /// The flow a command belongs to when its sender does not say: a transfer's id, a
    /// transaction's, a hold's.
    fn default_correlation(&self) -> Option<Uuid> {
        match self {
            Command::Account(c) => c.transfer_id(),
            Command::Transfer(c) => Some(c.transfer_id()),
            Command::Transaction(c) => Some(c.transaction_id),
            Command::Hold(c) => Some(c.hold_id()),
        }
    }

    /// Decided by the ledger's decider (`executor::ledger`), alone or in an atomic batch.
    pub fn is_ledger(&self) -> bool {
        matches!(self, Command::Transaction(_) | Command::Hold(_))
    }
}

/// A command ready for the executor.
#[derive(Debug, Clone)]
pub struct IncomingCommand {
    pub command_id: Uuid,
    pub command: Command,
    /// Defaults to the command id (a client's command is its own flow and cause).
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    /// The token's subject.
    pub actor: String,
    /// The token's `owner` claim: the command may touch only that owner's accounts.
    pub owner: Option<String>,
    pub trace_id: Option<String>,
    /// The client's `traceparent`, kept whole when well formed.
    pub traceparent: Option<String>,
    pub expected_version: Option<u64>,
}

impl IncomingCommand {
    /// A command with no headers: the client is its own correlation and cause.
    pub fn new(command_id: Uuid, command: Command) -> Self {
        IncomingCommand {
            command_id,
            command,
            correlation_id: None,
            causation_id: None,
            actor: ANONYMOUS_ACTOR.to_owned(),
            owner: None,
            trace_id: None,
            traceparent: None,
            expected_version: None,
        }
    }

    pub fn aggregate_type(&self) -> &'static str {
        self.command.aggregate_type()
    }

    pub fn aggregate_id(&self) -> String {
        self.command.aggregate_id()
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
    let command = match aggregate {
        "transfer" => TransferCommand::from_json(name, value).map(Command::Transfer),
        "transaction" => serde_json::from_value(value)
            .map(Command::Transaction)
            .map_err(domain::account::DecodeError::Body),
        "hold" => HoldCommand::from_json(name, value).map(Command::Hold),
        "batch" => {
            return Err(Rejection::new(
                ErrorCode::UnknownCommand,
                "a batch is sent on its request/reply subject (`<prefix>.cmd.batch.submit`)",
            ));
        }
        _ => AccountCommand::from_json(name, value).map(Command::Account),
    }
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
    let correlation_id =
        uuid_header(headers, HEADER_CORRELATION_ID)?.or(command.default_correlation());
    Ok(IncomingCommand {
        command_id,
        correlation_id,
        causation_id: uuid_header(headers, HEADER_CAUSATION_ID)?,
        command,
        actor: ANONYMOUS_ACTOR.to_owned(),
        owner: None,
        trace_id: headers.and_then(trace_id),
        traceparent: headers
            .filter(|h| trace_id(h).is_some())
            .and_then(|h| h.get(HEADER_TRACEPARENT))
            .map(|v| v.as_str().to_owned()),
        expected_version,
    })
}

/// An optional UUID header; present but malformed is an error, never ignored.
fn uuid_header(headers: Option<&HeaderMap>, name: &str) -> Result<Option<Uuid>, Rejection> {
    let Some(raw) = headers.and_then(|h| h.get(name)) else {
        return Ok(None);
    };
    Uuid::parse_str(raw.as_str().trim()).map(Some).map_err(|_| {
        Rejection::new(
            ErrorCode::SchemaViolation,
            format!("header {name} must be a UUID, got `{}`", raw.as_str()),
        )
        .with_details(serde_json::json!({"header": name}))
    })
}

/// The trace id and the whole `traceparent` of a message, when its `traceparent` is well formed.
pub fn trace_of(headers: Option<&HeaderMap>) -> (Option<String>, Option<String>) {
    let Some(headers) = headers else {
        return (None, None);
    };
    match trace_id(headers) {
        Some(id) => (
            Some(id),
            headers
                .get(HEADER_TRACEPARENT)
                .map(|v| v.as_str().to_owned()),
        ),
        None => (None, None),
    }
}

/// The trace id of the message's W3C `traceparent`, if well formed.
fn trace_id(headers: &HeaderMap) -> Option<String> {
    platform::trace_context::trace_id(headers.get(HEADER_TRACEPARENT)?.as_str())
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
