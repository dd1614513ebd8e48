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

/// Connected dependencies, ready to use.
#[derive(Debug, Clone)]
pub struct Infra {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub subjects: Subjects,
    pub streams: StreamNames,
}

impl Infra {
    /// Connects to both, migrates the database and creates or updates the streams. Every
    /// service runs this at start, so any of them can come up first.
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
        let streams =
            nats::ensure_streams(&jetstream, &subjects, nats_config.stream_replicas).await?;
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
        })
    }

    pub fn readiness(&self) -> crate::ops_http::Readiness {
        crate::ops_http::Readiness {
            pool: self.pool.clone(),
            nats: self.nats.clone(),
            projection_lag: None,
        }
    }

    /// Readiness that also requires `projection` to be at most `events_max` events behind.
    pub fn readiness_with_lag(
        &self,
        projection: &'static str,
        events_max: u64,
    ) -> crate::ops_http::Readiness {
        crate::ops_http::Readiness {
            projection_lag: Some(crate::ops_http::ProjectionLag {
                jetstream: self.jetstream.clone(),
                events_stream: self.streams.events.clone(),
                projection,
                events_max,
            }),
            ..self.readiness()
        }
    }
}
