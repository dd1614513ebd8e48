//! The start-up every service shares: Postgres (pool + migrations), NATS (connection + streams).

use async_nats::jetstream;
use sqlx::PgPool;

use crate::config::{NatsConfig, PostgresConfig};
use crate::db::{self, DbError};
use crate::nats::{self, NatsError, StreamNames, Subjects};

#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Nats(#[from] NatsError),
}

/// How long a service waits at start for the streams to be as configured.
const STREAMS_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Connected dependencies, ready to use.
#[derive(Debug, Clone)]
pub struct Infra {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub subjects: Subjects,
    pub streams: StreamNames,
    /// This instance's metrics, served on `/metrics`.
    pub registry: prometheus::Registry,
}

impl Infra {
    /// Connects to both, migrates the database and creates or updates the streams (or, for a
    /// service whose NATS user may not change them, finds them as configured, waiting up to
    /// `STREAMS_WAIT` for the command-service). Every service runs this at start, so any of
    /// them can come up first.
    pub async fn connect(
        service: &str,
        postgres: &PostgresConfig,
        nats_config: &NatsConfig,
    ) -> Result<Self, InfraError> {
        let subjects = Subjects::new(&nats_config.subject_prefix)?;
        let pool = db::connect(postgres, service).await?;
        db::migrate(&pool).await?;
        let client = nats::connect(nats_config, service).await?;
        let jetstream = jetstream::new(client.clone());
        let window = std::time::Duration::from_millis(nats_config.duplicate_window_ms);
        // Under `deploy/nats-server.conf` only the command-service may create or change the
        // streams: another service started first waits for it, a bounded while.
        let started = std::time::Instant::now();
        let streams = loop {
            match nats::ensure_streams_partitioned(
                &jetstream,
                &subjects,
                nats_config.stream_replicas,
                window,
                nats_config.event_partitions,
            )
            .await
            {
                Ok(streams) => break streams,
                Err(error) if started.elapsed() < STREAMS_WAIT => {
                    tracing::warn!(service, %error, "streams not ready (the command-service creates them); retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(error) => return Err(error.into()),
            }
        };
        tracing::info!(
            service,
            prefix = subjects.prefix(),
            events_stream = %streams.events,
            "connected to PostgreSQL and NATS; migrations applied; streams ready"
        );
        Ok(Infra {
            pool,
            nats: client,
            jetstream,
            subjects,
            streams,
            registry: prometheus::Registry::new(),
        })
    }

    /// Readiness on PostgreSQL and NATS, serving this instance's registry; a service adds its
    /// own checks and metrics sources to it.
    pub fn readiness(&self) -> crate::ops_http::Readiness {
        crate::ops_http::Readiness::new(self.pool.clone(), self.nats.clone(), self.registry.clone())
    }
}
