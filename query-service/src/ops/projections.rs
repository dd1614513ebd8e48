//! `GET /v1/ops/projections`: each projection partition's position, counts and lag, and each
//! projection's totals and throughput.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, State};
use chrono::{DateTime, Utc};
use projections::Projection;
use projections::lag::consumer_name;
use serde::Serialize;
use sqlx::PgPool;

use super::{OpsContext, OpsError};
use crate::problem::Problem;

/// How long the NATS questions may take before the answer goes out without lag.
const NATS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProjectionsView {
    /// The events stream's last sequence; absent when NATS did not answer.
    pub stream_last_sequence: Option<u64>,
    /// Partitions of the events stream (1 when it has none).
    pub stream_partitions: Option<u32>,
    /// Why lag is absent, when it is.
    pub lag_unavailable: Option<String>,
    pub projections: Vec<ProjectionSummary>,
    pub partitions: Vec<PartitionStatus>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProjectionSummary {
    pub projection: String,
    /// The furthest events-stream sequence any partition reached.
    pub position: i64,
    pub events_applied: i64,
    /// Dead-lettered events an operator dropped.
    pub events_dropped: i64,
    /// Summed over partitions; absent when NATS did not answer.
    pub lag_events: Option<u64>,
    /// Aggregates held back behind a dead-lettered event.
    pub parked: i64,
    /// Events applied per second since this instance's previous answer (absent on the first).
    pub events_per_s: Option<f64>,
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PartitionStatus {
    pub projection: String,
    pub partition: u32,
    /// The events-stream sequence of the last event this partition applied (its checkpoint).
    pub position: i64,
    pub events_applied: i64,
    pub events_dropped: i64,
    /// Events of its subjects not applied yet: its durable consumer's undelivered and
    /// unacknowledged messages (as `/readyz` counts), or, before the consumer exists, the
    /// stream's last sequence minus the position.
    pub lag_events: Option<u64>,
    /// When it last committed; absent before it applied anything.
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, sqlx::FromRow)]
struct CheckpointRow {
    projection: String,
    partition: i32,
    stream_sequence: i64,
    events_applied: i64,
    events_dropped: i64,
    updated_at: DateTime<Utc>,
}

/// What NATS says about the events stream and the projections' consumers.
struct StreamState {
    last_sequence: u64,
    partitions: u32,
    /// (projection, partition) -> pending + in-flight messages of its consumer.
    pending: std::collections::HashMap<(String, u32), u64>,
}

/// Each projection's position, lag and throughput, per partition and in total.
#[utoipa::path(
    get,
    path = "/v1/ops/projections",
    tag = "ops",
    responses(
        (status = 200, body = ProjectionsView),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn status(
    State(pool): State<PgPool>,
    context: Option<Extension<Arc<OpsContext>>>,
) -> Result<Json<ProjectionsView>, OpsError> {
    let rows: Vec<CheckpointRow> = sqlx::query_as(
        "SELECT projection, partition, stream_sequence, events_applied, events_dropped, updated_at
         FROM projection_partition_checkpoints ORDER BY projection, partition",
    )
    .fetch_all(&pool)
    .await?;
    let parked: Vec<(String, i64)> =
        sqlx::query_as("SELECT projection, count(*) FROM projection_parked GROUP BY projection")
            .fetch_all(&pool)
            .await?;
    let context = context.map(|Extension(c)| c);
    let (stream, lag_unavailable) = match &context {
        None => (
            None,
            Some("this instance has no NATS context for ops".to_owned()),
        ),
        Some(context) => match tokio::time::timeout(NATS_TIMEOUT, stream_state(context)).await {
            Ok(Ok(state)) => (Some(state), None),
            Ok(Err(error)) => (None, Some(error)),
            Err(_) => (None, Some("NATS did not answer in time".to_owned())),
        },
    };
    let partitions = partitions(&rows, stream.as_ref());
    let projections = Projection::ALL
        .iter()
        .map(|p| summary(p.name(), &partitions, &parked, context.as_deref()))
        .collect();
    Ok(Json(ProjectionsView {
        stream_last_sequence: stream.as_ref().map(|s| s.last_sequence),
        stream_partitions: stream.as_ref().map(|s| s.partitions),
        lag_unavailable,
        projections,
        partitions,
    }))
}

async fn stream_state(context: &OpsContext) -> Result<StreamState, String> {
    let mut stream = context
        .jetstream
        .get_stream(&context.events_stream)
        .await
        .map_err(|e| format!("events stream {}: {e}", context.events_stream))?;
    let info = stream.info().await.map_err(|e| e.to_string())?;
    let partitions = platform::nats::event_partitions_of(&info.config)
        .unwrap_or(1)
        .max(1);
    let last_sequence = info.state.last_sequence;
    let mut pending = std::collections::HashMap::new();
    for projection in Projection::ALL {
        for k in 0..partitions {
            // A consumer not created yet (its worker never ran) has no figure: the caller falls
            // back to the position.
            if let Ok(info) = stream.consumer_info(consumer_name(projection, k)).await {
                let in_flight = u64::try_from(info.num_ack_pending).unwrap_or(0);
                pending.insert(
                    (projection.name().to_owned(), k),
                    info.num_pending + in_flight,
                );
            }
        }
    }
    Ok(StreamState {
        last_sequence,
        partitions,
        pending,
    })
}

/// One row per projection and partition: the checkpoints there are, and the stream's
/// partitions that have none yet (nothing applied).
fn partitions(rows: &[CheckpointRow], stream: Option<&StreamState>) -> Vec<PartitionStatus> {
    let count = stream.map_or(1, |s| s.partitions);
    let mut out = Vec::new();
    for projection in Projection::ALL {
        let name = projection.name();
        let mine: Vec<&CheckpointRow> = rows.iter().filter(|r| r.projection == name).collect();
        let highest = mine
            .iter()
            .filter_map(|r| u32::try_from(r.partition).ok())
            .map(|p| p + 1)
            .max()
            .unwrap_or(0);
        for partition in 0..count.max(highest) {
            let row = mine
                .iter()
                .find(|r| u32::try_from(r.partition).ok() == Some(partition));
            let position = row.map_or(0, |r| r.stream_sequence);
            let lag_events = stream.map(|s| {
                s.pending
                    .get(&(name.to_owned(), partition))
                    .copied()
                    .unwrap_or_else(|| {
                        s.last_sequence
                            .saturating_sub(u64::try_from(position).unwrap_or(0))
                    })
            });
            out.push(PartitionStatus {
                projection: name.to_owned(),
                partition,
                position,
                events_applied: row.map_or(0, |r| r.events_applied),
                events_dropped: row.map_or(0, |r| r.events_dropped),
                lag_events,
                updated_at: row.map(|r| r.updated_at),
            });
        }
    }
    out
}

fn summary(
    name: &str,
    partitions: &[PartitionStatus],
    parked: &[(String, i64)],
    context: Option<&OpsContext>,
) -> ProjectionSummary {
    let mine: Vec<&PartitionStatus> = partitions.iter().filter(|p| p.projection == name).collect();
    let events_applied = mine.iter().map(|p| p.events_applied).sum();
    ProjectionSummary {
        projection: name.to_owned(),
        position: mine.iter().map(|p| p.position).max().unwrap_or(0),
        events_applied,
        events_dropped: mine.iter().map(|p| p.events_dropped).sum(),
        lag_events: mine.iter().map(|p| p.lag_events).sum(),
        parked: parked
            .iter()
            .find(|(p, _)| p == name)
            .map_or(0, |(_, n)| *n),
        events_per_s: context.and_then(|c| c.throughput(name, events_applied)),
        updated_at: mine.iter().filter_map(|p| p.updated_at).max(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(projection: &str, partition: i32, stream_sequence: i64) -> CheckpointRow {
        CheckpointRow {
            projection: projection.to_owned(),
            partition,
            stream_sequence,
            events_applied: stream_sequence,
            events_dropped: 0,
            updated_at: Utc::now(),
        }
    }

    /// Every partition of the stream gets a row, checkpoint or not; lag is the consumer's
    /// figure, or the stream's head minus the position before the consumer exists.
    #[test]
    fn partitions_without_checkpoints_or_consumers_still_show() {
        let rows = [row("accounts", 1, 40)];
        let stream = StreamState {
            last_sequence: 50,
            partitions: 2,
            pending: [(("accounts".to_owned(), 0), 3)].into_iter().collect(),
        };
        let out = partitions(&rows, Some(&stream));
        let accounts: Vec<&PartitionStatus> =
            out.iter().filter(|p| p.projection == "accounts").collect();
        assert_eq!(accounts.len(), 2);
        assert_eq!((accounts[0].position, accounts[0].lag_events), (0, Some(3)));
        assert_eq!(
            (accounts[1].position, accounts[1].lag_events),
            (40, Some(10))
        );
        assert_eq!(out.len(), 2 * Projection::ALL.len());
        // Without NATS: the checkpoints alone, no lag.
        let out = partitions(&rows, None);
        let accounts: Vec<&PartitionStatus> =
            out.iter().filter(|p| p.projection == "accounts").collect();
        assert_eq!(accounts.len(), 2, "partition 1 has a checkpoint");
        assert!(accounts.iter().all(|p| p.lag_events.is_none()));
        let summary = summary("accounts", &out, &[("accounts".to_owned(), 2)], None);
        assert_eq!(
            (summary.position, summary.parked, summary.lag_events),
            (40, 2, None)
        );
    }
}
