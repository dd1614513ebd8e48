//! How far each projection is behind the events stream, as its durable consumer sees it: a
//! `/readyz` check and `/metrics` gauges for the services that depend on the read models (this
//! one and the query-service).

use std::sync::Arc;

use platform::infra::Infra;
use platform::ops_http::{CHECK_TIMEOUT, MetricsSource, Readiness, ReadinessCheck};
use sqlx::PgPool;

use crate::Projection;
use crate::figures::FiguresSource;

/// The durable consumer of one partition of a projection on the events stream.
pub fn consumer_name(projection: Projection, partition: u32) -> String {
    format!("projection-{}-p{partition}", projection.name())
}

/// The one consumer a projection had before partitions; workers delete it at start.
pub fn unpartitioned_consumer_name(projection: Projection) -> String {
    format!("projection-{}", projection.name())
}

/// The subjects of one partition of a projection: `<prefix>.evt.<type>.*.<partition>`, or, on
/// a stream without partitions (`partitions` None), all of the type's.
pub fn filter_subject(
    prefix: &str,
    projection: Projection,
    partition: u32,
    partitions: Option<u32>,
) -> String {
    match partitions {
        Some(_) => format!("{prefix}.evt.{}.*.{partition}", projection.aggregate_type()),
        None => format!("{prefix}.evt.{}.>", projection.aggregate_type()),
    }
}

/// Undelivered plus unacknowledged events of `projection` over its partitions' consumers;
/// `None` while any of them does not exist yet.
pub async fn consumers_behind(
    stream: &mut async_nats::jetstream::stream::Stream,
    projection: Projection,
    partitions: u32,
) -> Option<u64> {
    let mut behind = 0u64;
    for k in 0..partitions.max(1) {
        let info = stream
            .consumer_info(consumer_name(projection, k))
            .await
            .ok()?;
        behind += info.num_pending + u64::try_from(info.num_ack_pending).unwrap_or(0);
    }
    Some(behind)
}

/// Readiness for a service that builds or serves the read models: PostgreSQL, NATS and every
/// projection at most `events_max` events behind. `/metrics` adds the projections' figures and
/// their lag.
pub fn readiness(infra: &Infra, events_max: u64) -> Readiness {
    let lag = Arc::new(ProjectionLag {
        pool: infra.pool.clone(),
        jetstream: infra.jetstream.clone(),
        events_stream: infra.streams.events.clone(),
        projections: Projection::ALL.to_vec(),
        events_max,
    });
    infra
        .readiness()
        .with_metrics(Arc::new(FiguresSource {
            pool: infra.pool.clone(),
        }))
        .with_check(lag.clone())
        .with_metrics(lag)
}

/// Not ready while a projection lags the events stream by more than `events_max` events.
#[derive(Debug, Clone)]
pub struct ProjectionLag {
    /// Where the projections keep their checkpoints.
    pub pool: PgPool,
    pub jetstream: async_nats::jetstream::Context,
    pub events_stream: String,
    /// The projections the service depends on.
    pub projections: Vec<Projection>,
    pub events_max: u64,
}

impl ProjectionLag {
    /// Events of the projection's own subjects that it has not applied yet: what its durable
    /// consumers (one per partition) still have to deliver or have in flight. (The stream's head minus the
    /// projection's position would count other aggregates' events too.) Before the consumer
    /// exists, everything in the stream is behind.
    pub async fn events_behind(&self, projection: Projection) -> Result<u64, String> {
        let mut stream = self
            .jetstream
            .get_stream(&self.events_stream)
            .await
            .map_err(|e| e.to_string())?;
        let info = stream.info().await.map_err(|e| e.to_string())?;
        let partitions = platform::nats::event_partitions_of(&info.config).unwrap_or(1);
        let messages = info.state.messages;
        Ok(consumers_behind(&mut stream, projection, partitions)
            .await
            .unwrap_or(messages))
    }
}

#[platform::ops_http::async_trait]
impl ReadinessCheck for ProjectionLag {
    fn name(&self) -> &'static str {
        "projection_lag"
    }

    async fn check(&self) -> Result<(), String> {
        let mut reasons = Vec::new();
        for &projection in &self.projections {
            match tokio::time::timeout(CHECK_TIMEOUT, self.events_behind(projection)).await {
                Ok(Ok(behind)) if behind <= self.events_max => {}
                Ok(Ok(behind)) => reasons.push(format!(
                    "projection {} is {behind} events behind (limit {})",
                    projection.name(),
                    self.events_max
                )),
                Ok(Err(error)) => reasons.push(error),
                Err(_) => reasons.push("timed out".to_owned()),
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }
}

/// Each projection's lag in events (its consumer's undelivered and unacknowledged messages)
/// and in seconds (how long it has been behind without applying anything; 0 when caught up).
#[platform::ops_http::async_trait]
impl MetricsSource for ProjectionLag {
    async fn render(&self) -> String {
        let mut events = String::from(
            "# HELP tally_projection_lag_events Events of the projection's subjects not yet applied.\n\
             # TYPE tally_projection_lag_events gauge\n",
        );
        let mut seconds = String::from(
            "# HELP tally_projection_lag_seconds Seconds since a projection that is behind last applied a batch.\n\
             # TYPE tally_projection_lag_seconds gauge\n",
        );
        for &projection in &self.projections {
            let Ok(Ok(behind)) =
                tokio::time::timeout(CHECK_TIMEOUT, self.events_behind(projection)).await
            else {
                continue;
            };
            let name = projection.name();
            let idle_s: f64 = if behind == 0 {
                0.0
            } else {
                sqlx::query_scalar(
                    "SELECT extract(epoch FROM now() - updated_at)::float8
                     FROM projection_checkpoints WHERE projection = $1",
                )
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .ok()
                .flatten()
                .unwrap_or(0.0)
            };
            events.push_str(&format!(
                "tally_projection_lag_events{{projection=\"{name}\"}} {behind}\n"
            ));
            seconds.push_str(&format!(
                "tally_projection_lag_seconds{{projection=\"{name}\"}} {idle_s}\n"
            ));
        }
        events + &seconds
    }
}
