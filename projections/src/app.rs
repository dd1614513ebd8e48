//! Start-up and the run loop: `Application::build(config)`, then `app.run(shutdown)`.

use std::net::SocketAddr;

use platform::infra::{Infra, InfraError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

const SERVICE: &str = "projections";

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Infra(#[from] InfraError),
    #[error(transparent)]
    Bind(#[from] platform::ops_http::BindError),
    #[error("cannot register metrics")]
    Metrics(#[from] platform::metrics::MetricsError),
    #[error("cannot read the events stream: {0}")]
    Stream(String),
}

/// Makes the runner of a (projection, partition) the supervisor takes on.
#[derive(Debug)]
pub struct Factory {
    pool: sqlx::PgPool,
    jetstream: async_nats::jetstream::Context,
    stream: String,
    prefix: String,
    dead_letters: [(crate::Projection, String); crate::Projection::ALL.len()],
    config: crate::runner::RunnerConfig,
    batch_sizes: prometheus::HistogramVec,
    event_delays: prometheus::HistogramVec,
}

impl crate::partitions::RunnerFactory for Factory {
    fn runner(
        &self,
        projection: crate::Projection,
        partition: u32,
        partitions: Option<u32>,
    ) -> crate::runner::Runner {
        crate::runner::Runner {
            pool: self.pool.clone(),
            jetstream: self.jetstream.clone(),
            stream: self.stream.clone(),
            projection,
            partition,
            partitions: partitions.unwrap_or(1).max(1),
            filter_subject: crate::lag::filter_subject(
                &self.prefix,
                projection,
                partition,
                partitions,
            ),
            dead_letter_subject: self
                .dead_letters
                .iter()
                .find(|(p, _)| *p == projection)
                .map(|(_, s)| s.clone())
                .unwrap_or_default(),
            config: self.config.clone(),
            batch_sizes: self.batch_sizes.with_label_values(&[projection.name()]),
            event_delays: self.event_delays.with_label_values(&[projection.name()]),
            gap_log: crate::runner::GapLog::new(),
        }
    }
}

#[derive(Debug)]
pub struct Application {
    infra: Infra,
    ops_listener: TcpListener,
    ops_addr: SocketAddr,
    supervisor: crate::partitions::Supervisor<Factory>,
    lag_max: u64,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let infra = Infra::connect(SERVICE, &config.postgres, &config.nats).await?;
        let (ops_listener, ops_addr) = platform::ops_http::bind(config.ops_addr).await?;
        let batch_sizes = platform::metrics::histogram_vec(
            &infra.registry,
            "tally_projection_batch_size",
            "Events per batch a projection applies in one transaction.",
            &["projection"],
            &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0],
        )?;
        let event_delays = platform::metrics::histogram_vec(
            &infra.registry,
            "tally_projection_event_delay_seconds",
            "Time from an event's recording in the event store to its commit in the read model.",
            &["projection"],
            &platform::metrics::LATENCY_BUCKETS_S,
        )?;
        // The stream says how many partitions there are (its creator's `--event-partitions`):
        // every worker then divides the same ones, whatever its own setting.
        let events = infra
            .jetstream
            .get_stream(&infra.streams.events)
            .await
            .map_err(|e| StartupError::Stream(e.to_string()))?;
        let partitions = platform::nats::event_partitions_of(&events.cached_info().config);
        if partitions.is_none() {
            tracing::warn!(
                stream = %infra.streams.events,
                "the events stream has no partitions (created by an older version?): one consumer per projection"
            );
        }
        for projection in crate::Projection::ALL {
            // The consumer of the version before partitions, if any: its work is now the
            // partitions' (an event it had not delivered is filled from the store when its
            // aggregate's next one arrives, or by a rebuild; docs/operations.md).
            let _ = events
                .delete_consumer(&crate::lag::unpartitioned_consumer_name(projection))
                .await;
        }
        let factory = Factory {
            pool: infra.pool.clone(),
            jetstream: infra.jetstream.clone(),
            stream: infra.streams.events.clone(),
            prefix: infra.subjects.prefix().to_owned(),
            dead_letters: crate::Projection::ALL.map(|p| (p, infra.subjects.dead_letter(p.name()))),
            config: crate::runner::RunnerConfig {
                batch_max: config.batch_max.max(1),
                poison_attempts: config.poison_attempts.max(1),
            },
            batch_sizes,
            event_delays,
        };
        let supervisor = crate::partitions::Supervisor {
            pool: infra.pool.clone(),
            jetstream: infra.jetstream.clone(),
            stream: infra.streams.events.clone(),
            factory,
        };
        Ok(Application {
            infra,
            ops_listener,
            ops_addr,
            supervisor,
            lag_max: config.ready_projection_lag_max,
        })
    }

    /// Where `/healthz` and `/readyz` are served.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    /// Runs until `shutdown` is cancelled, then drains and returns.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let router = platform::ops_http::router(crate::lag::readiness(&self.infra, self.lag_max));
        let supervisor = tokio::spawn(self.supervisor.run(shutdown.clone()));
        tokio::spawn(platform::allocator_trim::run(shutdown.clone()));
        tracing::info!(service = SERVICE, ops_addr = %self.ops_addr, "ready");
        platform::ops_http::serve(self.ops_listener, router, shutdown.clone()).await?;
        if let Err(error) = supervisor.await {
            tracing::error!(%error, "projection supervisor panicked");
        }
        // Flush what the client buffered before the process exits.
        if let Err(error) = self.infra.nats.drain().await {
            tracing::warn!(%error, "NATS drain failed");
        }
        tracing::info!(service = SERVICE, "stopped");
        Ok(())
    }
}
