//! The change feed (docs/feed.md): `GET /v1/accounts/{id}/feed` and `GET /v1/feed?owner=`, as
//! Server-Sent Events. Each change of an account is sent once the accounts projection has
//! committed it, read from the read model (never from the events stream, which clients may
//! not read); the hub (`hub`) learns of commits from PostgreSQL notifications and wakes the
//! feeds concerned, each of which reads on from its own cursor (`cursor`, `read`), so any
//! number of query-service instances serve feeds and a client resumes on any of them.

mod config;
mod cursor;
pub mod http;
pub mod hub;
mod read;
mod session;

use std::sync::Arc;

pub use config::FeedConfig;
pub use http::{account_feed, owner_feed};
pub use read::Change;

/// What every feed handler needs: the hub, the limits, the server's shutdown.
#[derive(Debug, Clone)]
pub struct Feeds {
    pub hub: Arc<hub::Hub>,
    pub config: FeedConfig,
    pub shutdown: tokio_util::sync::CancellationToken,
    ended: prometheus::IntCounterVec,
}

impl Feeds {
    pub fn new(
        config: FeedConfig,
        registry: &prometheus::Registry,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Feeds, prometheus::Error> {
        let ended = prometheus::IntCounterVec::new(
            prometheus::Opts::new("tally_feeds_ended_total", "Change feeds ended, by reason"),
            &["reason"],
        )?;
        registry.register(Box::new(ended.clone()))?;
        Ok(Feeds {
            hub: Arc::new(hub::Hub::new(
                config.per_token_max,
                config.total_max,
                registry,
            )?),
            config,
            shutdown,
            ended,
        })
    }
}
