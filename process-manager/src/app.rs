//! Start-up and the run loop: `Application::build(config)`, then `app.run(shutdown)`.

use std::net::SocketAddr;
use std::time::Duration;

use platform::infra::{Infra, InfraError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::command_client::{CommandClient, TokenSource};
use crate::config::Config;
use crate::reactions::StepIds;
use crate::worker::Worker;

const SERVICE: &str = "process-manager";

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Infra(#[from] InfraError),
    #[error(transparent)]
    Bind(#[from] platform::ops_http::BindError),
    #[error(transparent)]
    TokenKey(#[from] platform::auth::KeyError),
    #[error(
        "no way to authenticate: set TALLY_AUTH_HS256_SECRET(_FILE) or TALLY_PROCESS_MANAGER_TOKEN_FILE"
    )]
    NoToken,
    #[error(
        "no secret to derive command ids with: set TALLY_PROCESS_MANAGER_ID_SECRET_FILE (or TALLY_AUTH_HS256_SECRET(_FILE))"
    )]
    NoIdSecret,
    #[error("cannot read TALLY_PROCESS_MANAGER_ID_SECRET_FILE {path}: {source}")]
    IdSecretFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    IdSecret(#[from] crate::reactions::ShortSecret),
}

#[derive(Debug)]
pub struct Application {
    infra: Infra,
    ops_listener: TcpListener,
    ops_addr: SocketAddr,
    worker: Worker,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let hs256 = platform::auth::hs256_secret(&config.auth)?;
        let id_secret = match (&config.id_secret_file, &hs256) {
            (Some(path), _) => std::fs::read(path)
                .map(|bytes| bytes.trim_ascii().to_vec())
                .map_err(|source| StartupError::IdSecretFile {
                    path: path.display().to_string(),
                    source,
                })?,
            (None, Some(secret)) => secret.clone(),
            (None, None) => return Err(StartupError::NoIdSecret),
        };
        let ids = StepIds::new(&id_secret)?;
        let token = match (&config.token_file, hs256) {
            (Some(path), _) => TokenSource::File(path.clone()),
            (None, Some(secret)) => TokenSource::Mint {
                secret,
                issuer: config.auth.issuer.clone(),
                audience: config.auth.audience.clone(),
            },
            (None, None) => return Err(StartupError::NoToken),
        };
        let infra = Infra::connect(SERVICE, &config.postgres, &config.nats).await?;
        let (ops_listener, ops_addr) = platform::ops_http::bind(config.ops_addr).await?;
        let worker = Worker {
            jetstream: infra.jetstream.clone(),
            events_stream: infra.streams.events.clone(),
            filter_subject: format!("{}.evt.transfer.>", infra.subjects.prefix()),
            commands: CommandClient {
                nats: infra.nats.clone(),
                subjects: infra.subjects.clone(),
                timeout: Duration::from_millis(config.command_timeout_ms.max(1)),
                token,
            },
            ids,
            in_flight_max: config.in_flight_max.max(1),
        };
        Ok(Application {
            infra,
            ops_listener,
            ops_addr,
            worker,
        })
    }

    /// Where `/healthz` and `/readyz` are served.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    /// Runs until `shutdown` is cancelled, then finishes the events in hand and returns.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let router = platform::ops_http::router(self.infra.readiness());
        let worker = tokio::spawn(self.worker.run(shutdown.clone()));
        tokio::spawn(platform::allocator_trim::run(shutdown.clone()));
        tracing::info!(service = SERVICE, ops_addr = %self.ops_addr, "ready");
        platform::ops_http::serve(self.ops_listener, router, shutdown.clone()).await?;
        match worker.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "process manager could not start"),
            Err(error) => tracing::error!(%error, "process manager panicked"),
        }
        if let Err(error) = self.infra.nats.drain().await {
            tracing::warn!(%error, "NATS drain failed");
        }
        tracing::info!(service = SERVICE, "stopped");
        Ok(())
    }
}
