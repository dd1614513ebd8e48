//! The outbox backlog: committed events the relay has not published yet, and how long the
//! oldest waits. A `/readyz` check (`outbox_backlog`) and `/metrics` gauges, read from the
//! event store at each probe or scrape.

use platform::ops_http::{CHECK_TIMEOUT, MetricsSource, ReadinessCheck};
use sqlx::PgPool;

/// Backlogs are counted up to this many events (the gauge saturates there).
const BACKLOG_COUNTED_MAX: u64 = 100_000;

#[derive(Debug, Clone)]
pub struct OutboxWatch {
    pub pool: PgPool,
    /// The events stream the relay's checkpoint is kept for.
    pub stream: String,
    /// `/readyz` is not ready while more events than this wait.
    pub backlog_max: u64,
}

impl OutboxWatch {
    /// Counted in index order from the relay's checkpoint, up to `BACKLOG_COUNTED_MAX` (or
    /// `backlog_max + 1` if larger): a join against the checkpoint row read every event (the
    /// planner cannot see the checkpoint's value), 0.6 s of PostgreSQL per scrape or readiness
    /// probe at 3 M events.
    async fn backlog(&self) -> Result<event_store::outbox::Backlog, event_store::StoreError> {
        let cap = BACKLOG_COUNTED_MAX.max(self.backlog_max.saturating_add(1));
        // Saturating: a limit past i64::MAX counts everything anyway.
        let cap = i64::try_from(cap).unwrap_or(i64::MAX);
        event_store::outbox::backlog(&self.pool, &self.stream, cap).await
    }
}

#[platform::ops_http::async_trait]
impl ReadinessCheck for OutboxWatch {
    fn name(&self) -> &'static str {
        "outbox_backlog"
    }

    async fn check(&self) -> Result<(), String> {
        match tokio::time::timeout(CHECK_TIMEOUT, self.backlog()).await {
            Ok(Ok(backlog)) if backlog.events <= self.backlog_max => Ok(()),
            Ok(Ok(backlog)) => Err(format!(
                "{} committed events wait for the relay (limit {})",
                backlog.events, self.backlog_max
            )),
            Ok(Err(_)) => Err("backlog query failed".to_owned()),
            Err(_) => Err("timed out".to_owned()),
        }
    }
}

/// Left out, not failed, while PostgreSQL is down or slow.
#[platform::ops_http::async_trait]
impl MetricsSource for OutboxWatch {
    async fn render(&self) -> String {
        let Ok(Ok(backlog)) = tokio::time::timeout(CHECK_TIMEOUT, self.backlog()).await else {
            return String::new();
        };
        format!(
            "# HELP tally_outbox_backlog_events Committed events not yet published to the events stream (counted up to 100000).\n\
             # TYPE tally_outbox_backlog_events gauge\n\
             tally_outbox_backlog_events {}\n\
             # HELP tally_outbox_publish_lag_seconds Age of the oldest committed event not yet published.\n\
             # TYPE tally_outbox_publish_lag_seconds gauge\n\
             tally_outbox_publish_lag_seconds {}\n",
            backlog.events, backlog.oldest_age_s
        )
    }
}
