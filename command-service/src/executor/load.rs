//! Loading an aggregate for a decision: from memory or our snapshot, then the events after it.

use event_store::snapshots;

use super::decision::Reads;
use super::{Executable, ExecuteError, Executor};

/// An aggregate as of its `sequence`th event.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    pub aggregate_id: String,
    pub aggregate: A,
    pub sequence: usize,
}

impl<A: Default> Loaded<A> {
    /// An aggregate with no events.
    pub(super) fn new(aggregate_id: &str) -> Self {
        Loaded {
            aggregate_id: aggregate_id.to_owned(),
            aggregate: A::default(),
            sequence: 0,
        }
    }
}

/// The aggregate as this instance last saw it, without reading the store; `None` if it
/// is not in memory. Only a write can tell whether it is still current.
pub(super) fn cached<A: Executable>(ex: &Executor, aggregate_id: &str) -> Option<Loaded<A>> {
    let (aggregate, sequence) = A::cache(ex).get(aggregate_id)?;
    Some(Loaded {
        aggregate_id: aggregate_id.to_owned(),
        aggregate,
        sequence,
    })
}

/// From memory if `reads` allows and it is there (then `false`: unchecked), else from the
/// store (`true`).
pub(super) async fn current<A: Executable>(
    ex: &Executor,
    aggregate_id: &str,
    reads: Reads,
) -> Result<(Loaded<A>, bool), ExecuteError> {
    if reads == Reads::Memory
        && let Some(cached) = cached::<A>(ex, aggregate_id)
    {
        return Ok((cached, false));
    }
    Ok((load::<A>(ex, aggregate_id).await?, true))
}

/// The aggregate as of its last event: from memory or our snapshot, plus the events after
/// it (always read, so another instance's writes are never missed).
pub async fn load<A: Executable>(
    ex: &Executor,
    aggregate_id: &str,
) -> Result<Loaded<A>, ExecuteError> {
    let (aggregate, sequence) = match A::cache(ex).get(aggregate_id) {
        Some(cached) => cached,
        None => match snapshots::load::<A>(ex.store.pool(), aggregate_id).await? {
            Some(s) => (s.state, s.last_sequence),
            None => (A::default(), 0),
        },
    };
    let cached_sequence = sequence;
    let mut loaded = Loaded {
        aggregate_id: aggregate_id.to_owned(),
        aggregate,
        sequence,
    };
    for event in ex.store.events_after::<A>(aggregate_id, sequence).await? {
        let event = domain::account::upcast::upcast_event(event);
        let envelope = cqrs_es::EventEnvelope::<A>::try_from(event)
            .map_err(|e| ExecuteError::Internal(Box::new(e)))?;
        loaded.sequence = envelope.sequence;
        loaded.aggregate.apply(envelope.payload);
    }
    if loaded.sequence != cached_sequence || cached_sequence == 0 {
        A::cache(ex).put(aggregate_id, loaded.aggregate.clone(), loaded.sequence);
    }
    Ok(loaded)
}
