//! Sending one command: request/reply on `<prefix>.cmd.…`, or durably on `<prefix>.jobs.…` and
//! then waiting for its result on the inbox named in `Tally-Reply-To`.

use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::HeaderMap;
use clap::Args;
use domain::CommandReply;
use futures::StreamExt;
use uuid::Uuid;

#[derive(Debug, Args)]
pub struct Connection {
    /// NATS server URLs, comma-separated.
    #[arg(
        long = "nats-url",
        env = "TALLY_NATS_URL",
        default_value = "nats://127.0.0.1:14222",
        value_delimiter = ',',
        global = true
    )]
    pub urls: Vec<String>,
    /// Subject prefix of the Tally installation.
    #[arg(
        long = "subject-prefix",
        env = "TALLY_SUBJECT_PREFIX",
        default_value = "tally",
        global = true
    )]
    pub prefix: String,
    /// How long to wait for the answer.
    #[arg(long = "timeout-ms", default_value_t = 10_000, global = true)]
    pub timeout_ms: u64,
    /// Bearer token (JWT) sent with commands and reads (`tally token mint` makes one).
    #[arg(
        long = "token",
        env = "TALLY_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// NATS user (`tally-client` under `./dev up`).
    #[arg(long = "nats-user", env = "TALLY_NATS_USER", global = true)]
    pub user: Option<String>,
    /// NATS password.
    #[arg(
        long = "nats-password",
        env = "TALLY_NATS_PASSWORD",
        global = true,
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Prefix of the reply inboxes; default `_INBOX_<user>`, the only one the server lets that
    /// user read (`deploy/nats-server.conf`).
    #[arg(
        long = "nats-inbox-prefix",
        env = "TALLY_NATS_INBOX_PREFIX",
        global = true
    )]
    pub inbox_prefix: Option<String>,
}

impl Connection {
    /// Connect options with this connection's timeout, credentials and inbox prefix.
    pub fn options(&self) -> anyhow::Result<async_nats::ConnectOptions> {
        let options = match (&self.user, &self.password) {
            (Some(user), Some(password)) => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            _ => async_nats::ConnectOptions::new(),
        };
        let inbox_prefix =
            platform::nats::inbox_prefix(self.user.as_deref(), self.inbox_prefix.as_deref())?;
        Ok(options
            .name("tally-cli")
            .custom_inbox_prefix(inbox_prefix)
            .connection_timeout(Duration::from_millis(self.timeout_ms)))
    }
}

/// The `Authorization` value for `token`, if any.
pub fn authorization(token: Option<&str>) -> Option<String> {
    token
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| format!("Bearer {t}"))
}

#[derive(Debug, Args)]
pub struct SendOptions {
    /// Idempotency key: sending the same id again returns the first result.
    #[arg(long = "command-id")]
    pub command_id: Option<Uuid>,
    /// Refuse with `conflict` unless the account is at this version.
    #[arg(long = "expected-version")]
    pub expected_version: Option<u64>,
    /// Publish durably (`<prefix>.jobs.…`): kept until the service runs it, even across restarts.
    #[arg(long)]
    pub durable: bool,
}

pub async fn send(
    connection: &Connection,
    aggregate: &str,
    command: &str,
    body: &serde_json::Value,
    options: &SendOptions,
) -> anyhow::Result<CommandReply> {
    let response = request(connection, aggregate, command, body, options).await?;
    serde_json::from_slice(&response).context("the reply is not a Tally command reply")
}

/// Sends one message to `<prefix>.cmd.<aggregate>.<command>` (or its durable subject) and
/// returns the answer's bytes: a command reply, or a batch's list of them.
pub async fn request(
    connection: &Connection,
    aggregate: &str,
    command: &str,
    body: &serde_json::Value,
    options: &SendOptions,
) -> anyhow::Result<Vec<u8>> {
    let timeout = Duration::from_millis(connection.timeout_ms);
    let client = connection
        .options()?
        .connect(connection.urls.as_slice())
        .await
        .with_context(|| format!("cannot connect to NATS at {}", connection.urls.join(",")))?;
    let command_id = options.command_id.unwrap_or_else(Uuid::now_v7);
    let mut headers = HeaderMap::new();
    headers.insert("Tally-Command-Id", command_id.to_string().as_str());
    if let Some(value) = authorization(connection.token.as_deref()) {
        headers.insert("Authorization", value.as_str());
    }
    if let Some(version) = options.expected_version {
        headers.insert("Tally-Expected-Version", version.to_string().as_str());
    }
    let payload = serde_json::to_vec(body)?;
    let response = if options.durable {
        // The result comes to an inbox of ours, named in the header: only this connection's
        // NATS user can read it.
        let inbox = client.new_inbox();
        let mut subscription = client.subscribe(inbox.clone()).await?;
        headers.insert("Nats-Msg-Id", command_id.to_string().as_str());
        headers.insert("Tally-Reply-To", inbox.as_str());
        let subject = format!("{}.jobs.{aggregate}.{command}", connection.prefix);
        async_nats::jetstream::new(client.clone())
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .with_context(|| format!("cannot publish to {subject}"))?
            .await
            .with_context(|| format!("the commands stream did not store {subject}"))?;
        eprintln!("stored durably as command {command_id}; waiting for the result");
        match tokio::time::timeout(timeout, subscription.next()).await {
            Ok(Some(message)) => message.payload,
            _ => bail!(
                "no result within {} ms; the command stays queued and runs when a command-service is up",
                connection.timeout_ms
            ),
        }
    } else {
        let subject = format!("{}.cmd.{aggregate}.{command}", connection.prefix);
        match tokio::time::timeout(
            timeout,
            client.request_with_headers(subject.clone(), headers, payload.into()),
        )
        .await
        {
            Ok(Ok(message)) => message.payload,
            Ok(Err(error)) if error.kind() == async_nats::RequestErrorKind::NoResponders => {
                bail!("no command-service is listening on {subject}")
            }
            Ok(Err(error)) => return Err(error).context(format!("request to {subject} failed")),
            Err(_) => bail!(
                "no answer within {} ms (retry with --command-id {command_id} to avoid running it twice)",
                connection.timeout_ms
            ),
        }
    };
    Ok(response.to_vec())
}
