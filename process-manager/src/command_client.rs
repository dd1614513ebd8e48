//! Sends the process manager's commands over NATS request/reply, the path every client uses.

use std::time::Duration;

use async_nats::HeaderMap;
use domain::CommandReply;
use platform::nats::Subjects;
use uuid::Uuid;

use crate::reactions::Send;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
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
