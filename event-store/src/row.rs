//! The one row type of `events`, as every reader gets it: the relay, rebuilds and audits.

use chrono::{DateTime, Utc};
use domain::hash_chain::ChainedEvent;
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::types::Json;

use crate::StoreError;

/// One stored event. `B` is how its JSON (payload and metadata) is held: a parsed
/// [`Value`] for readers that look inside (audits, rebuilds), or the text as stored,
/// `Box<RawValue>`, for the relay, which passes it through untouched.
#[derive(Debug, Clone)]
pub struct StoredEvent<B = Value> {
    /// The writing transaction (`xid8`, read as a number): commit order's first key.
    pub tx_id: i64,
    /// Insertion order, unique: commit order's second key.
    pub global_position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Json<B>,
    pub metadata: Json<B>,
    /// `None` on rows written before the hash chain (migration 0005) and not yet backfilled.
    pub hash: Option<Vec<u8>>,
    pub recorded_at: DateTime<Utc>,
}

/// Stored JSON as text, untouched.
pub type RawEvent = StoredEvent<Box<RawValue>>;

impl<B> StoredEvent<B> {
    /// Where this event lies in commit order.
    pub fn position(&self) -> crate::CommitPosition {
        crate::CommitPosition {
            tx_id: self.tx_id,
            global_position: self.global_position,
        }
    }

    /// The sequence as the domain counts it; the table's CHECK keeps it non-negative.
    pub fn sequence_u64(&self) -> Result<u64, StoreError> {
        u64::try_from(self.sequence)
            .map_err(|_| StoreError::corrupt(format!("a stored sequence of {}", self.sequence)))
    }
}

impl StoredEvent<Value> {
    /// The fields the hash chain covers. The sequence is the table's (never negative under
    /// its CHECK); a negative one would hash as `u64::MAX` and so fail verification.
    pub fn chained(&self) -> ChainedEvent<'_> {
        ChainedEvent {
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
            sequence: u64::try_from(self.sequence).unwrap_or(u64::MAX),
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
}
