//! Start-up and the run loop: `Application::build(config)`, then `app.run(shutdown)`.

use std::net::SocketAddr;
use std::time::Duration;

use platform::infra::{Infra, InfraError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::consistency_waits::ConsistencyWaits;
use crate::read_cache::ReadCache;
use crate::router::{self, Limits};

const SERVICE: &str = "query-service";

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Infra(#[from] InfraError),
    #[error(transparent)]
    Bind(#[from] platform::ops_http::BindError),
    #[error(transparent)]
    TokenKey(#[from] platform::auth::KeyError),
    #[error("cannot register metrics")]
    Metrics(#[from] platform::metrics::MetricsError),
}

#[derive(Debug)]
pub struct Application {
    infra: Infra,
    listener: TcpListener,
    addr: SocketAddr,
    limits: Limits,
    access: std::sync::Arc<crate::access::Access>,
    metrics: crate::http_metrics::HttpMetrics,
    read_cache: std::sync::Arc<ReadCache>,
    waits: std::sync::Arc<ConsistencyWaits>,
    feeds: crate::feed::Feeds,
    /// What `/v1/ops` reads from NATS (lag, the audit digest).
    ops: std::sync::Arc<crate::ops::OpsContext>,
    lag_max: u64,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let access = std::sync::Arc::new(crate::access::Access::new(
            platform::auth::TokenVerifier::from_config(&config.auth)?,
            config.rate_per_s,
            config.rate_burst,
            config.rate_keys_max,
        ));
        let infra = Infra::connect(SERVICE, &config.postgres, &config.nats).await?;
        let (listener, addr) = platform::ops_http::bind(config.http_addr).await?;
        let metrics = crate::http_metrics::HttpMetrics::register(&infra.registry)?;
        access.register_metrics(&infra.registry)?;
        let read_cache = std::sync::Arc::new(ReadCache::new(
            config.read_cache_max,
            Duration::from_millis(config.read_cache_ttl_ms),
            &infra.registry,
        )?);
        let feeds = crate::feed::Feeds::new(
            config.feeds.clone(),
            &infra.registry,
            CancellationToken::new(),
        )?;
        let ops = crate::ops::OpsContext::new(&infra, config.audit_public_key.clone());
        Ok(Application {
            ops,
            feeds,
            infra,
            listener,
            addr,
            limits: Limits {
                request_timeout: Duration::from_millis(config.request_timeout_ms),
                body_max_bytes: config.body_max_bytes,
                cors_origins: config.cors_origins.clone(),
            },
            access,
            metrics,
            read_cache,
            waits: std::sync::Arc::default(),
            lag_max: config.ready_projection_lag_max,
        })
    }

    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled; in-flight requests finish first.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let following = tokio::spawn(std::sync::Arc::clone(&self.read_cache).follow(
            self.infra.nats.clone(),
            format!("{}.evt.account.>", self.infra.subjects.prefix()),
            shutdown.child_token(),
        ));
        let watching = {
            let (waits, pool) = (std::sync::Arc::clone(&self.waits), self.infra.pool.clone());
            let shutdown = shutdown.child_token();
            tokio::spawn(async move { waits.watch(pool, shutdown).await })
        };
        let hearing = tokio::spawn(
            std::sync::Arc::clone(&self.feeds.hub)
                .listen(self.infra.pool.clone(), shutdown.child_token()),
        );
        // Feeds end (with a last event saying so) as shutdown begins: the server's graceful
        // shutdown waits for every open response, and a feed would otherwise never finish.
        let feeds_end = {
            let (shutdown, feeds) = (shutdown.clone(), self.feeds.shutdown.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                feeds.cancel();
            })
        };
        let app = router::build(
            projections::lag::readiness(&self.infra, self.lag_max),
            &self.limits,
            router::Shared {
                access: self.access,
                metrics: self.metrics,
                read_cache: self.read_cache,
                waits: self.waits,
                feeds: self.feeds,
                ops: self.ops,
            },
        );
        tokio::spawn(platform::allocator_trim::run(shutdown.clone()));
        tracing::info!(service = SERVICE, http_addr = %self.addr, "ready");
        platform::ops_http::serve(self.listener, app, shutdown).await?;
        let _ = following.await;
        let _ = hearing.await;
        let _ = feeds_end.await;
        let _ = watching.await;
        if let Err(error) = self.infra.nats.drain().await {
            tracing::warn!(%error, "NATS drain failed");
        }
        tracing::info!(service = SERVICE, "stopped");
        Ok(())
    }
}
