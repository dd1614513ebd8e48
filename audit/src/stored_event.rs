//! One row of `events`, as audits read it: stored bytes, untouched by upcasting.

use chrono::{DateTime, Utc};
use domain::hash_chain::ChainedEvent;
use serde_json::Value;

/// The columns every audit query selects, in [`StoredEvent`]'s order.
pub const COLUMNS: &str = "aggregate_type, aggregate_id, sequence, event_type, event_version, \
     payload, metadata, hash, global_position, recorded_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub hash: Option<Vec<u8>>,
    pub global_position: i64,
    pub recorded_at: DateTime<Utc>,
}

impl StoredEvent {
    /// The fields the chain covers. A negative sequence (impossible under the table's CHECK)
    /// hashes as 0 and so fails verification rather than panicking.
    pub fn chained(&self) -> ChainedEvent<'_> {
        ChainedEvent {
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
            sequence: u64::try_from(self.sequence).unwrap_or(0),
            event_type: &self.event_type,
            event_version: &self.event_version,
            payload: &self.payload,
            metadata: &self.metadata,
        }
    }

    /// A metadata value as text (metadata values are stored as strings).
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(Value::as_str)
    }

    /// When the command was accepted (`metadata.recorded_at`, part of the chain), falling back to
    /// the row's insertion time.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        self.meta(domain::metadata::KEY_RECORDED_AT)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map_or(self.recorded_at, |t| t.with_timezone(&Utc))
    }

    pub fn hash_hex(&self) -> Option<String> {
        self.hash.as_deref().map(hex::encode)
    }
}
