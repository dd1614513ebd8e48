//! The message the outbox relay publishes on `<prefix>.evt.<aggregate_type>.<aggregate_id>`:
//! one stored event with its position and metadata. Consumers (projections, the process
//! manager, clients) read this, so it is versioned like the events themselves.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `Nats-Msg-Id` of an event: unique per event, so JetStream drops re-publications.
pub fn event_message_id(aggregate_type: &str, aggregate_id: &str, sequence: u64) -> String {
    format!("{aggregate_type}:{aggregate_id}:{sequence}")
}

/// An event's UUID, derived from its identity (aggregate and sequence), so every reader names
/// it the same way: what a process manager records as the `causation_id` of the command it
/// sends in reaction.
pub fn event_id(aggregate_type: &str, aggregate_id: &str, sequence: u64) -> uuid::Uuid {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!(
            "tally:event:{}",
            event_message_id(aggregate_type, aggregate_id, sequence)
        )
        .as_bytes(),
    )
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventMessage {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Per-aggregate sequence, 1-based and gapless.
    pub sequence: u64,
    pub event_type: String,
    pub event_version: String,
    /// Insertion order across all aggregates (not commit order).
    pub global_position: i64,
    pub recorded_at: DateTime<Utc>,
    /// The event as stored: `{"<EventType>": {...}}`.
    pub payload: serde_json::Value,
    /// `EventMetadata` as stored (string values).
    pub metadata: serde_json::Value,
}

/// Headers the relay sets on every event message, besides `Nats-Msg-Id`.
pub mod headers {
    pub const EVENT_TYPE: &str = "Tally-Event-Type";
    pub const EVENT_VERSION: &str = "Tally-Event-Version";
    pub const AGGREGATE_TYPE: &str = "Tally-Aggregate-Type";
    pub const AGGREGATE_ID: &str = "Tally-Aggregate-Id";
    pub const SEQUENCE: &str = "Tally-Sequence";
    pub const COMMAND_ID: &str = "Tally-Command-Id";
    pub const TRACEPARENT: &str = "traceparent";
}
