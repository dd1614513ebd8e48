//! Loading an aggregate for a command: from memory or our snapshot, then the events after it.

use cqrs_es::persist::EventStoreAggregateContext;

use super::{Executable, ExecuteError, Executor, from_sqlx};
use crate::snapshots;

impl Executor {
    /// The aggregate as this instance last saw it, without reading the store; `None` if it
    /// is not in memory. Only a write can tell whether it is still current.
    pub(super) fn cached<A: Executable>(
        &self,
        aggregate_id: &str,
    ) -> Option<EventStoreAggregateContext<A>> {
        let (aggregate, current_sequence) = A::cache(self).get(aggregate_id)?;
        Some(EventStoreAggregateContext {
            aggregate_id: aggregate_id.to_owned(),
            aggregate,
            current_sequence,
            current_snapshot: None,
        })
    }

    /// The aggregate as of its last event: from memory or our snapshot, plus the events after
    /// it (always read, so another instance's writes are never missed).
    pub async fn load<A: Executable>(
        &self,
        aggregate_id: &str,
    ) -> Result<EventStoreAggregateContext<A>, ExecuteError> {
        let (aggregate, current_sequence) = match A::cache(self).get(aggregate_id) {
            Some(cached) => cached,
            None => match snapshots::load::<A>(self.repo.pool(), aggregate_id)
                .await
                .map_err(from_sqlx)?
            {
                Some(s) => (s.state, s.last_sequence),
                None => (A::default(), 0),
            },
        };
        let cached_sequence = current_sequence;
        let mut context = EventStoreAggregateContext {
            aggregate_id: aggregate_id.to_owned(),
            aggregate,
            current_sequence,
            current_snapshot: None,
        };
        let events = cqrs_es::persist::PersistedEventRepository::get_last_events::<A>(
            &self.repo,
            aggregate_id,
            current_sequence,
        )
        .await
        .map_err(|e| match e {
            cqrs_es::persist::PersistenceError::ConnectionError(e) => ExecuteError::Unavailable(e),
            other => ExecuteError::Internal(Box::new(other)),
        })?;
        for event in events {
            let event = domain::account::upcast::upcast_event(event);
            let envelope = cqrs_es::EventEnvelope::<A>::try_from(event)
                .map_err(|e| ExecuteError::Internal(Box::new(e)))?;
            context.current_sequence = envelope.sequence;
            context.aggregate.apply(envelope.payload);
        }
        if context.current_sequence != cached_sequence || cached_sequence == 0 {
            A::cache(self).put(
                aggregate_id,
                context.aggregate.clone(),
                context.current_sequence,
            );
        }
        Ok(context)
    }
}
