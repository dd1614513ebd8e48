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
}

#[derive(Debug)]
pub struct Application {
    infra: Infra,
    ops_listener: TcpListener,
    ops_addr: SocketAddr,
    runners: Vec<crate::runner::Runner>,
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
        let runners = crate::Projection::ALL
            .into_iter()
            .map(|projection| crate::runner::Runner {
                pool: infra.pool.clone(),
                jetstream: infra.jetstream.clone(),
                stream: infra.streams.events.clone(),
                projection,
                filter_subject: format!(
                    "{}.evt.{}.>",
                    infra.subjects.prefix(),
                    projection.aggregate_type()
                ),
                dead_letter_subject: infra.subjects.dead_letter(projection.name()),
                config: crate::runner::RunnerConfig {
                    batch_max: config.batch_max.max(1),
                    poison_attempts: config.poison_attempts.max(1),
                },
                batch_sizes: batch_sizes.with_label_values(&[projection.name()]),
                event_delays: event_delays.with_label_values(&[projection.name()]),
            })
            .collect();
        Ok(Application {
            infra,
            ops_listener,
            ops_addr,
            runners,
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
        let runners: Vec<_> = self
            .runners
            .into_iter()
            .map(|runner| tokio::spawn(runner.run(shutdown.clone())))
            .collect();
        tokio::spawn(platform::allocator_trim::run(shutdown.clone()));
        tracing::info!(service = SERVICE, ops_addr = %self.ops_addr, "ready");
        platform::ops_http::serve(self.ops_listener, router, shutdown.clone()).await?;
        for runner in runners {
            match runner.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(%error, "projection could not start"),
                Err(error) => tracing::error!(%error, "projection panicked"),
            }
        }
        // Flush what the client buffered before the process exits.
        if let Err(error) = self.infra.nats.drain().await {
            tracing::warn!(%error, "NATS drain failed");
        }
        tracing::info!(service = SERVICE, "stopped");
        Ok(())
    }
}
