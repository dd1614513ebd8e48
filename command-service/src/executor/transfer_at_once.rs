//! A transfer request settled in its own write (`--transfer-settlement at-once`): the transfer
//! and both accounts are decided together (`domain::transfer::decide_at_once`) and their events
//! committed in one statement, so a transfer costs one command instead of seven and no money is
//! ever in flight between the accounts.
//!
//! The three aggregates are locked in one order (by key), so two transfers between the same
//! accounts in opposite directions cannot deadlock, and a group of commands on either account
//! waits for the transfer. Another instance's concurrent write to any of them takes a sequence
//! this write needs, and the whole attempt runs again on fresh reads.

use cqrs_es::persist::{EventStoreAggregateContext, PersistenceError, SerializedEvent};
use cqrs_es::{Aggregate, EventEnvelope};
use domain::transfer::{RequestTransfer, Transfer, decide_at_once};
use domain::{Account, CommandReply, ErrorCode};

use super::{Attempt, Executable, ExecuteError, Executor, backoff, metadata};
use crate::incoming::IncomingCommand;
use crate::rejection::Rejection;
use crate::repository::{self, LogRow};

impl Executor {
    pub(super) async fn run_transfer_at_once(
        &self,
        incoming: IncomingCommand,
        request: RequestTransfer,
    ) -> Result<CommandReply, ExecuteError> {
        let mut keys = vec![
            format!("{}:{}", Transfer::TYPE, request.transfer_id),
            format!("{}:{}", Account::TYPE, request.from),
            format!("{}:{}", Account::TYPE, request.to),
        ];
        keys.sort();
        keys.dedup();
        let mut _serialised = Vec::with_capacity(keys.len());
        for key in &keys {
            _serialised.push(self.locks.lock(key).await);
        }
        let mut fresh = false;
        let mut conflicts = 0;
        while conflicts <= self.limits.conflict_retries_max {
            let outcome = self.attempt_at_once(&incoming, &request, fresh).await?;
            fresh = true;
            match outcome {
                Attempt::Done(reply) => return Ok(reply),
                Attempt::Unverified => {}
                Attempt::Conflict => {
                    if let Some(reply) = self.logged(&incoming).await? {
                        return Ok(reply);
                    }
                    if let Some(retries) = &self.conflict_retries {
                        retries.inc();
                    }
                    tokio::time::sleep(backoff(conflicts)).await;
                    conflicts += 1;
                }
            }
        }
        Ok(Rejection::new(
            ErrorCode::Conflict,
            "the transfer's accounts are under heavy concurrent use; retry with the same command id",
        )
        .into_reply(incoming.command_id))
    }

    /// Decides on the in-memory aggregates unless `fresh`; an outcome that writes nothing to an
    /// aggregate decided from memory (a refusal, a failed transfer) is checked on a fresh read
    /// first, since no sequence of that aggregate would catch a stale state.
    async fn attempt_at_once(
        &self,
        incoming: &IncomingCommand,
        request: &RequestTransfer,
        fresh: bool,
    ) -> Result<Attempt, ExecuteError> {
        let transfer_id = request.transfer_id.to_string();
        // A transfer id is new unless it was used before: decide as if it were, and let the
        // write's key on (transfer, 1) catch one that exists (every later attempt reads fresh).
        let transfer = match (fresh, self.cached::<Transfer>(&transfer_id)) {
            (false, Some(cached)) => cached,
            (false, None) => EventStoreAggregateContext {
                aggregate_id: transfer_id.clone(),
                aggregate: Transfer::default(),
                current_sequence: 0,
                current_snapshot: None,
            },
            (true, _) => self.load::<Transfer>(&transfer_id).await?,
        };
        let from = self.current::<Account>(&request.from, fresh).await?;
        let to = self.current::<Account>(&request.to, fresh).await?;
        let verified = fresh;
        if let Some(expected) = incoming.expected_version
            && u64::try_from(transfer.current_sequence).ok() != Some(expected)
        {
            if !verified {
                return Ok(Attempt::Unverified);
            }
            let rejection = Rejection::new(
                ErrorCode::Conflict,
                format!(
                    "expected version {expected}, but the transfer is at {}",
                    transfer.current_sequence
                ),
            );
            return self.reject(incoming, rejection).await.map(Attempt::Done);
        }
        let settled = match decide_at_once(
            &transfer.aggregate,
            request,
            &from.aggregate,
            &to.aggregate,
            incoming.owner.as_deref(),
        ) {
            Ok(settled) => settled,
            Err(_) if !verified => return Ok(Attempt::Unverified),
            // Another owner's source: answered as a missing one, and not logged.
            Err(error) if error.refuses_the_sender() => {
                return Ok(Attempt::Done(
                    Rejection::from(&error).into_reply(incoming.command_id),
                ));
            }
            Err(error) => {
                return self
                    .reject(incoming, Rejection::from(&error))
                    .await
                    .map(Attempt::Done);
            }
        };
        if !settled.completed() && !verified {
            return Ok(Attempt::Unverified);
        }

        let metadata = metadata(incoming).to_map();
        let (transfer_events, transfer_after) = serialize(&transfer, settled.transfer, &metadata)?;
        let (from_events, from_after) = serialize(&from, settled.from, &metadata)?;
        let (to_events, to_after) = serialize(&to, settled.to, &metadata)?;
        let version =
            u64::try_from(transfer_after.1).map_err(|e| ExecuteError::Internal(Box::new(e)))?;
        let reply =
            repository::accepted_reply(incoming.command_id, Transfer::TYPE, &transfer_id, version);
        let key = repository::LogKey::of(incoming);
        let log = [LogRow::of(&reply, &key, Transfer::TYPE, &transfer_id)];
        let written = self
            .repo
            .persist_aggregates(&[&transfer_events, &from_events, &to_events], &log)
            .await;
        match written.map_err(repository::persistence_error) {
            Ok(()) => {}
            Err(PersistenceError::OptimisticLockError) => return Ok(Attempt::Conflict),
            Err(PersistenceError::ConnectionError(e)) => return Err(ExecuteError::Unavailable(e)),
            Err(other) => return Err(ExecuteError::Internal(Box::new(other))),
        }
        self.remember(&transfer, transfer_after).await;
        self.remember(&from, from_after).await;
        self.remember(&to, to_after).await;
        Ok(Attempt::Done(reply))
    }

    /// The aggregate from memory (unless `fresh`) or from the store.
    async fn current<A: Executable>(
        &self,
        aggregate_id: &str,
        fresh: bool,
    ) -> Result<EventStoreAggregateContext<A>, ExecuteError> {
        match (fresh, self.cached::<A>(aggregate_id)) {
            (false, Some(context)) => Ok(context),
            _ => self.load::<A>(aggregate_id).await,
        }
    }

    /// After the commit: the new state in memory, and a snapshot when one is due.
    async fn remember<A: Executable>(
        &self,
        before: &EventStoreAggregateContext<A>,
        (state, sequence): (A, usize),
    ) {
        if sequence == before.current_sequence {
            return;
        }
        self.maybe_snapshot(
            &before.aggregate_id,
            before.current_sequence,
            sequence,
            &state,
        )
        .await;
        A::cache(self).put(&before.aggregate_id, state, sequence);
    }
}

/// `events` as stored after `context`'s last event, and the state and sequence they lead to.
fn serialize<A: Aggregate + Clone>(
    context: &EventStoreAggregateContext<A>,
    events: Vec<A::Event>,
    metadata: &std::collections::HashMap<String, String>,
) -> Result<(Vec<SerializedEvent>, (A, usize)), ExecuteError> {
    let mut state = context.aggregate.clone();
    let mut sequence = context.current_sequence;
    let mut serialized = Vec::with_capacity(events.len());
    for payload in events {
        sequence += 1;
        let envelope = EventEnvelope::<A> {
            aggregate_id: context.aggregate_id.clone(),
            sequence,
            payload,
            metadata: metadata.clone(),
        };
        serialized.push(
            SerializedEvent::try_from(&envelope)
                .map_err(|e| ExecuteError::Internal(Box::new(e)))?,
        );
        state.apply(envelope.payload);
    }
    Ok((serialized, (state, sequence)))
}
