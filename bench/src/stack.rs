//! The running stack (`./dev up`) the end-to-end scenarios load: where it is, and how to send
//! it a command as any client would.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use domain::CommandReply;
use uuid::Uuid;

/// Every send waits at most this long for its reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub struct StackArgs {
    /// NATS of the running stack (a cluster's nodes comma-separated).
    #[arg(
        long = "nats-url",
        env = "TALLY_NATS_URL",
        default_value = "nats://127.0.0.1:14222"
    )]
    pub nats_url: String,
    #[arg(long = "nats-user", env = "TALLY_NATS_USER")]
    pub nats_user: Option<String>,
    #[arg(
        long = "nats-password",
        env = "TALLY_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub nats_password: Option<String>,
    /// An `admin` token (`eval "$(./dev env)"` sets one): admin is not rate limited.
    #[arg(long, env = "TALLY_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The query-service of the running stack.
    #[arg(
        long = "http-url",
        env = "TALLY_HTTP_URL",
        default_value = "http://127.0.0.1:8480"
    )]
    pub http_url: String,
    /// PostgreSQL of the running stack, for the baselines.
    #[arg(
        long = "database-url",
        env = "TALLY_DATABASE_URL",
        default_value = "postgres://tally:tally@127.0.0.1:15432/tally"
    )]
    pub database_url: String,
    /// The ops endpoints (`/metrics`) of the command-service and the projections worker, to
    /// wait between scenarios until the previous one's events are all applied.
    #[arg(long = "command-ops-url", default_value = "http://127.0.0.1:9181")]
    pub command_ops_url: String,
    #[arg(long = "projections-ops-url", default_value = "http://127.0.0.1:9182")]
    pub projections_ops_url: String,
    /// Where `./dev up` keeps the services' pid files (for their memory figures).
    #[arg(
        long = "run-dir",
        env = "TALLY_DEV_RUN_DIR",
        default_value = ".dev/run"
    )]
    pub run_dir: PathBuf,
}

impl StackArgs {
    /// Waits, at most `max`, until nothing committed waits for the relay and no projection is
    /// behind: so a scenario does not measure the backlog the one before it left. Whether it
    /// got there.
    pub async fn wait_until_applied(&self, http: &reqwest::Client, max: Duration) -> bool {
        let deadline = std::time::Instant::now() + max;
        let gauge_sum = |text: &str, name: &str| -> Option<f64> {
            let values: Vec<f64> = text
                .lines()
                .filter(|l| l.starts_with(name) && !l.starts_with('#'))
                .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
                .collect();
            (!values.is_empty()).then(|| values.iter().sum())
        };
        loop {
            let mut behind = 0.0;
            for (url, gauge) in [
                (&self.command_ops_url, "tally_outbox_backlog_events"),
                (&self.projections_ops_url, "tally_projection_lag_events"),
            ] {
                let text = match http.get(format!("{url}/metrics")).send().await {
                    Ok(response) => response.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                behind += gauge_sum(&text, gauge).unwrap_or(f64::INFINITY);
            }
            if behind == 0.0 {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn nats(&self) -> anyhow::Result<async_nats::Client> {
        let options = match (&self.nats_user, &self.nats_password) {
            (Some(user), Some(password)) => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            _ => async_nats::ConnectOptions::new(),
        };
        // The server lets each user read only its own inboxes (deploy/nats-server.conf).
        let inbox_prefix = platform::nats::inbox_prefix(self.nats_user.as_deref(), None)?;
        // A cluster's nodes, comma-separated, as the services take them.
        let urls: Vec<String> = self.nats_url.split(',').map(str::to_owned).collect();
        options
            .custom_inbox_prefix(inbox_prefix)
            .connect(urls.as_slice())
            .await
            .context("connecting to NATS (is `./dev up` running? did you `eval \"$(./dev env)\"`?)")
    }

    pub fn http(&self) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .timeout(REPLY_TIMEOUT)
            .pool_max_idle_per_host(256)
            .build()?)
    }

    pub async fn pool(&self, connections: u32) -> anyhow::Result<sqlx::PgPool> {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(connections)
            .connect(&self.database_url)
            .await
            .context("connecting to the stack's PostgreSQL")
    }
}

/// Sends one command over NATS request/reply, as a client does.
pub async fn send(
    nats: &async_nats::Client,
    token: &str,
    command: &str,
    body: &serde_json::Value,
) -> anyhow::Result<CommandReply> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Tally-Command-Id", Uuid::now_v7().to_string().as_str());
    headers.insert("Authorization", format!("Bearer {token}").as_str());
    let reply = tokio::time::timeout(
        REPLY_TIMEOUT,
        nats.request_with_headers(
            format!("tally.cmd.{command}"),
            headers,
            serde_json::to_vec(body)?.into(),
        ),
    )
    .await
    .context("no reply within 10 s")??;
    Ok(serde_json::from_slice(&reply.payload)?)
}

/// Opens `n` funded accounts named `<prefix>-<i>` and returns their ids.
pub async fn open_accounts(
    nats: &async_nats::Client,
    token: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let accounts: Vec<String> = (0..n.max(1)).map(|i| format!("{prefix}-{i}")).collect();
    for account in &accounts {
        for (command, body) in [
            (
                "account.open",
                serde_json::json!({"account_id": account, "owner": "bench", "currency": "EUR"}),
            ),
            (
                "account.deposit",
                serde_json::json!({"account_id": account, "amount": 1_000_000_000_i64}),
            ),
        ] {
            match send(nats, token, command, &body).await? {
                CommandReply::Accepted { .. } => {}
                CommandReply::Rejected { error, .. } => {
                    anyhow::bail!("setting up {account}: {command} refused: {error:?}")
                }
            }
        }
    }
    Ok(accounts)
}

/// A fresh prefix so runs never touch each other's accounts.
pub fn fresh_prefix(scenario: &str) -> String {
    format!(
        "bench-{scenario}-{}",
        &Uuid::new_v4().simple().to_string()[..8]
    )
}
