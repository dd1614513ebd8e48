//! Start-up and the run loop: `Application::build(config)`, then `app.run(shutdown)`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use platform::infra::{Infra, InfraError};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::audit_digests::DigestPublisher;
use crate::config::Config;
use crate::executor::{Executor, ExecutorLimits};
use crate::ingress::Ingress;
use crate::jobs::Jobs;
use crate::relay::{Relay, RelayConfig};
use crate::schema_check::{SchemaLoadError, SchemaRegistry};
use event_store::EventStore;

const SERVICE: &str = "command-service";

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Infra(#[from] InfraError),
    #[error(transparent)]
    Schemas(#[from] SchemaLoadError),
    #[error(transparent)]
    Db(#[from] platform::db::DbError),
    #[error("cannot subscribe to commands")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error(transparent)]
    Bind(#[from] platform::ops_http::BindError),
    #[error(transparent)]
    SigningKey(#[from] audit::digest_signing::KeyError),
    #[error(transparent)]
    TokenKey(#[from] platform::auth::KeyError),
    #[error("cannot register metrics")]
    Metrics(#[from] platform::metrics::MetricsError),
}

#[derive(Debug)]
pub struct Application {
    infra: Infra,
    ops_listener: TcpListener,
    ops_addr: SocketAddr,
    executor: Arc<Executor>,
    schemas: Arc<SchemaRegistry>,
    access: Arc<crate::access::Access>,
    metrics: crate::metrics::CommandMetrics,
    jobs_waiting: Arc<crate::jobs::Waiting>,
    relay: Relay,
    subscription: async_nats::Subscriber,
    digest_key: Option<ed25519_dalek::SigningKey>,
    config: Config,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let infra = Infra::connect(SERVICE, &config.postgres, &config.nats).await?;
        // Rows from before the hash chain (or from an older instance during a rolling upgrade)
        // are chained before this instance writes after them.
        match audit::backfill::backfill(&infra.pool).await {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, "hashed event rows written before the hash chain"),
            Err(error) => {
                tracing::warn!(%error, "hash-chain backfill failed; the next start retries")
            }
        }
        let digest_key = config
            .audit_signing_key_file
            .as_deref()
            .map(audit::digest_signing::load_signing_key)
            .transpose()?;
        let schemas = Arc::new(SchemaRegistry::load()?);
        let access = Arc::new(crate::access::Access::new(
            platform::auth::TokenVerifier::from_config(&config.auth)?,
            config.command_rate_per_s,
            config.command_rate_burst,
        ));
        let metrics = crate::metrics::CommandMetrics::register(&infra.registry)?;
        let jobs_waiting = crate::jobs::Waiting::register(&infra.registry)?;
        let executor = Arc::new(
            Executor::new(
                EventStore::with_write_statements_max(
                    infra.pool.clone(),
                    config.write_statements_max,
                ),
                ExecutorLimits {
                    conflict_retries_max: config.conflict_retries_max,
                    snapshot_every: config.snapshot_every,
                    aggregate_cache_max: config.aggregate_cache_max,
                    group_commit: config.group_commit,
                    account_queue_max: usize::try_from(config.account_queue_max)
                        .unwrap_or(usize::MAX),
                    transfers_at_once: config.transfer_settlement
                        == crate::config::TransferSettlement::AtOnce,
                },
            )
            .with_conflict_counter(metrics.conflict_retries.clone()),
        );
        let relay = Relay::new(
            executor.store().commit_signal(),
            infra.pool.clone(),
            infra.jetstream.clone(),
            infra.subjects.clone(),
            &infra.streams,
            RelayConfig {
                batch_max: config.relay_batch_max.max(1),
                poll: Duration::from_millis(config.relay_poll_ms.max(1)),
                fail_publish: config.relay_fail_publish,
            },
        )
        .with_publish_error_counter(metrics.publish_errors.clone())
        .with_delay_histogram(metrics.relay_delays.clone());
        let subscription = crate::ingress::subscribe(&infra.nats, &infra.subjects).await?;
        let (ops_listener, ops_addr) = platform::ops_http::bind(config.ops_addr).await?;
        Ok(Application {
            infra,
            ops_listener,
            ops_addr,
            executor,
            schemas,
            access,
            metrics,
            jobs_waiting,
            relay,
            subscription,
            digest_key,
            config,
        })
    }

    /// Where `/healthz` and `/readyz` are served.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    /// Runs until `shutdown`: then stops taking commands, finishes those in flight, flushes the
    /// relay, drains NATS and returns.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let in_flight = Arc::new(Semaphore::new(self.config.commands_in_flight_max.max(1)));
        let ingress_in_flight = Arc::clone(&in_flight);
        let deadline = Duration::from_millis(self.config.command_timeout_ms.max(1));
        let ingress = Ingress {
            nats: self.infra.nats.clone(),
            subjects: self.infra.subjects.clone(),
            executor: Arc::clone(&self.executor),
            schemas: Arc::clone(&self.schemas),
            access: Arc::clone(&self.access),
            metrics: self.metrics.clone(),
            in_flight: Arc::clone(&in_flight),
            in_flight_max: self.config.commands_in_flight_max.max(1),
            deadline,
        };
        let jobs = Jobs {
            nats: self.infra.nats.clone(),
            jetstream: self.infra.jetstream.clone(),
            subjects: self.infra.subjects.clone(),
            streams: self.infra.streams.clone(),
            executor: Arc::clone(&self.executor),
            schemas: Arc::clone(&self.schemas),
            access: Arc::clone(&self.access),
            metrics: self.metrics.clone(),
            in_flight,
            deadline,
            max_deliver: self.config.jobs_max_deliver.max(1),
            retry_max: Duration::from_millis(self.config.jobs_retry_max_ms.max(1)),
            waiting: Arc::clone(&self.jobs_waiting),
        };
        let relay_shutdown = CancellationToken::new();
        let relay = tokio::spawn(self.relay.run(relay_shutdown.clone()));
        let digests = tokio::spawn(
            DigestPublisher {
                pool: self.infra.pool.clone(),
                jetstream: self.infra.jetstream.clone(),
                subject: self.infra.subjects.audit_digest(),
                stream: self.infra.streams.audit.clone(),
                interval: Duration::from_secs(self.config.audit_digest_interval_s),
                signing_key: self.digest_key,
            }
            .run(shutdown.clone()),
        );
        let expiry = tokio::spawn(crate::hold_expiry::run(
            Arc::clone(&self.executor),
            Duration::from_millis(self.config.hold_expiry_interval_ms.max(10)),
            shutdown.clone(),
        ));
        let ingress = tokio::spawn(ingress.run(self.subscription, shutdown.clone()));
        let jobs = tokio::spawn(jobs.run(shutdown.clone()));
        let outbox = Arc::new(crate::outbox_watch::OutboxWatch {
            pool: self.infra.pool.clone(),
            stream: self.infra.streams.events.clone(),
            backlog_max: self.config.ready_outbox_backlog_max,
        });
        let readiness = self
            .infra
            .readiness()
            .with_check(outbox.clone())
            .with_metrics(outbox)
            .with_metrics(Arc::new(crate::metrics::InFlight {
                semaphore: Arc::clone(&ingress_in_flight),
                max: self.config.commands_in_flight_max.max(1),
            }));
        let ops = tokio::spawn(platform::ops_http::serve(
            self.ops_listener,
            crate::jobs::with_readiness(
                platform::ops_http::router(readiness.clone()),
                readiness,
                Arc::clone(&self.jobs_waiting),
            ),
            shutdown.clone(),
        ));
        tokio::spawn(platform::allocator_trim::run(shutdown.clone()));
        tracing::info!(service = SERVICE, ops_addr = %self.ops_addr, "ready");

        if let Err(error) = ingress.await {
            tracing::error!(%error, "command ingress panicked");
        }
        match jobs.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "durable commands failed"),
            Err(error) => tracing::error!(%error, "durable commands panicked"),
        }
        if let Err(error) = expiry.await {
            tracing::error!(%error, "hold expiry worker panicked");
        }
        if let Err(error) = digests.await {
            tracing::error!(%error, "audit digest publisher panicked");
        }
        // Every command has finished: let the relay publish what they committed, then stop.
        relay_shutdown.cancel();
        if let Err(error) = relay.await {
            tracing::error!(%error, "relay panicked");
        }
        match ops.await {
            Ok(result) => result?,
            Err(error) => tracing::error!(%error, "ops endpoint panicked"),
        }
        if let Err(error) = self.infra.nats.drain().await {
            tracing::warn!(%error, "NATS drain failed");
        }
        tracing::info!(service = SERVICE, "stopped");
        Ok(())
    }
}
