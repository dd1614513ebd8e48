//! The one write path: a decision's new events (per aggregate, consecutive after what its
//! decider read), their chain hashes, and its command-log rows, in one statement, so they stand
//! or fall together. A taken sequence or command id fails the whole of it and writes nothing.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use cqrs_es::{Aggregate, DomainEvent};
use domain::hash_chain::{self, ChainHash};
use lru::LruCache;
use serde_json::Value;

use crate::StoreError;
use crate::command_log::LogRow;

/// An event a decision adds, serialised as postgres-es stores it (so postgres-es keeps
/// reading the table): the payload as serde's externally tagged enum, the metadata as an
/// object of strings.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    pub sequence: u64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
}

impl NewEvent {
    /// `event` of `A` as stored at `sequence` of `aggregate_id`, with `metadata`.
    pub fn of<A: Aggregate>(
        aggregate_id: &str,
        sequence: u64,
        event: &A::Event,
        metadata: &Value,
    ) -> Result<NewEvent, StoreError> {
        Ok(NewEvent {
            aggregate_type: A::TYPE,
            aggregate_id: aggregate_id.to_owned(),
            sequence,
            event_type: event.event_type(),
            event_version: event.event_version(),
            payload: serde_json::to_value(event)
                .map_err(|e| StoreError::internal("serialising an event", e))?,
            metadata: metadata.clone(),
        })
    }
}

/// What one decision writes: each aggregate's new events (consecutive, in order) and the
/// command-log rows.
#[derive(Debug, Default)]
pub struct Append {
    pub aggregates: Vec<Vec<NewEvent>>,
    pub log: Vec<LogRow>,
}

impl Append {
    pub fn is_empty(&self) -> bool {
        self.log.is_empty() && self.aggregates.iter().all(Vec::is_empty)
    }
}

/// Chain heads this instance committed, so the next append to a warm aggregate need not read
/// its predecessor's hash back. Stored rows never change, so a head we wrote stays true.
const CHAIN_HEADS_MAX: usize = 10_000;

/// `(aggregate type, aggregate id)` → the last sequence this instance wrote and its hash.
type Heads = LruCache<(&'static str, String), (u64, ChainHash)>;

pub(crate) struct ChainHeads(Mutex<Heads>);

impl Default for ChainHeads {
    fn default() -> Self {
        ChainHeads(Mutex::new(LruCache::new(
            NonZeroUsize::new(CHAIN_HEADS_MAX).unwrap_or(NonZeroUsize::MIN),
        )))
    }
}

impl ChainHeads {
    /// The hash of `(aggregate, sequence)` if this instance wrote it last.
    pub(crate) fn get(
        &self,
        aggregate_type: &'static str,
        aggregate_id: &str,
        sequence: u64,
    ) -> Option<ChainHash> {
        let mut heads = self.0.lock().unwrap_or_else(|p| p.into_inner());
        heads
            .get(&(aggregate_type, aggregate_id.to_owned()))
            .filter(|(head, _)| *head == sequence)
            .map(|(_, hash)| *hash)
    }

    /// After a commit: the last event of an aggregate and its hash.
    pub(crate) fn remember(&self, last: &NewEvent, hash: ChainHash) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).put(
            (last.aggregate_type, last.aggregate_id.clone()),
            (last.sequence, hash),
        );
    }
}

/// The chain hash of each event, continuing from `prev` (the stored predecessor of the first).
pub(crate) fn chain(prev: ChainHash, events: &[NewEvent]) -> Vec<ChainHash> {
    let mut prev = prev;
    events
        .iter()
        .map(|event| {
            prev = hash_chain::event_hash(
                &prev,
                &hash_chain::ChainedEvent {
                    aggregate_type: event.aggregate_type,
                    aggregate_id: &event.aggregate_id,
                    sequence: event.sequence,
                    event_type: &event.event_type,
                    event_version: &event.event_version,
                    payload: &event.payload,
                    metadata: &event.metadata,
                },
            );
            prev
        })
        .collect()
}
