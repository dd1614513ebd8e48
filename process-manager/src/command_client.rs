//! Sends the process manager's commands over NATS request/reply, the path every client uses.

use std::time::Duration;

use async_nats::HeaderMap;
use domain::CommandReply;
use platform::nats::Subjects;
use uuid::Uuid;

use crate::reactions::Send;

/// The subject the process manager acts as: the `actor` of every event it causes.
pub const SUBJECT: &str = "process-manager";
/// Lifetime of a minted token; minted per command, so short is free.
const MINTED_TTL_S: u64 = 300;

/// Where the process manager's bearer token comes from.
#[derive(Clone)]
pub enum TokenSource {
    /// Minted per command with the shared HS256 secret.
    Mint {
        secret: Vec<u8>,
        issuer: String,
        audience: String,
    },
    /// Read from this file per command.
    File(std::path::PathBuf),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Mint { issuer, .. } => write!(f, "Mint {{ issuer: {issuer:?}, .. }}"),
            TokenSource::File(path) => write!(f, "File({})", path.display()),
        }
    }
}

impl TokenSource {
    fn token(&self) -> Result<String, SendError> {
        match self {
            TokenSource::Mint {
                secret,
                issuer,
                audience,
            } => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                platform::auth::mint_hs256(
                    secret,
                    issuer,
                    audience,
                    SUBJECT,
                    &[platform::auth::Scope::Admin],
                    None,
                    now,
                    MINTED_TTL_S,
                )
                .map_err(|e| SendError::Token(e.to_string()))
            }
            TokenSource::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|e| SendError::Token(format!("{}: {e}", path.display()))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no token to send: {0}")]
    Token(String),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("request failed")]
    Request(#[from] async_nats::RequestError),
    #[error("unreadable reply")]
    Reply(#[from] serde_json::Error),
}

#[derive(Debug, Clone)]
pub struct CommandClient {
    pub nats: async_nats::Client,
    pub subjects: Subjects,
    pub timeout: Duration,
    pub token: TokenSource,
}

/// Why a command was sent: the flow and the event.
#[derive(Debug, Clone)]
pub struct Cause {
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    pub traceparent: Option<String>,
}

impl CommandClient {
    pub async fn send(&self, command: &Send, cause: &Cause) -> Result<CommandReply, SendError> {
        let mut headers = HeaderMap::new();
        headers.insert("Tally-Command-Id", command.command_id.to_string().as_str());
        headers.insert(
            "Tally-Correlation-Id",
            cause.correlation_id.to_string().as_str(),
        );
        headers.insert(
            "Tally-Causation-Id",
            cause.causation_id.to_string().as_str(),
        );
        headers.insert(
            "Authorization",
            format!("Bearer {}", self.token.token()?).as_str(),
        );
        if let Some(traceparent) = &cause.traceparent {
            headers.insert("traceparent", traceparent.as_str());
        }
        let subject = self.subjects.command(command.aggregate, command.command);
        let body = serde_json::to_vec(&command.body)?;
        let request = self
            .nats
            .request_with_headers(subject, headers, body.into());
        let message = tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| SendError::Timeout(self.timeout))??;
        Ok(serde_json::from_slice(&message.payload)?)
    }
}
