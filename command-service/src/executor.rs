//! Load, handle, commit, retry: the small executor cqrs-es 0.5 does not provide (its `execute`
//! returns neither the events nor their sequences and never retries a conflict).

use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventStore};
use cqrs_es::{Aggregate, AggregateError, EventStore};
use domain::{Account, CommandReply, ErrorCode, EventMetadata};
use rand::Rng;
use uuid::Uuid;

use crate::aggregate_locks::AggregateLocks;
use crate::incoming::IncomingCommand;
use crate::rejection::Rejection;
use crate::repository::{self, TallyRepository};
use crate::snapshots;

/// Why a command got no answer from the domain: nothing was decided, a retry is safe.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("PostgreSQL is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("unexpected failure")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ExecuteError {
    pub fn rejection(&self) -> Rejection {
        match self {
            ExecuteError::Unavailable(_) => Rejection::unavailable("PostgreSQL"),
            ExecuteError::Internal(_) => Rejection::internal(),
        }
    }
}

fn from_sqlx(error: sqlx::Error) -> ExecuteError {
    match repository::persistence_error(error) {
        cqrs_es::persist::PersistenceError::ConnectionError(e) => ExecuteError::Unavailable(e),
        other => ExecuteError::Internal(Box::new(other)),
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ExecutorLimits {
    pub conflict_retries_max: u32,
    pub snapshot_every: u64,
}

pub struct Executor {
    repo: TallyRepository,
    store: PersistedEventStore<TallyRepository, Account>,
    locks: AggregateLocks,
    limits: ExecutorLimits,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

enum Attempt {
    Done(CommandReply),
    Conflict,
}

impl Executor {
    pub fn new(repo: TallyRepository, limits: ExecutorLimits) -> Self {
        Executor {
            store: PersistedEventStore::new_event_store(repo.clone())
                .with_upcasters(domain::account::upcast::account_upcasters()),
            repo,
            locks: AggregateLocks::default(),
            limits,
        }
    }

    pub fn repository(&self) -> &TallyRepository {
        &self.repo
    }

    /// Runs `incoming` exactly once per command id: a repeated id gets the first reply.
    #[tracing::instrument(skip_all, fields(command_id = %incoming.command_id, aggregate_id = incoming.aggregate_id(), command = incoming.command.name()))]
    pub async fn execute(&self, incoming: IncomingCommand) -> Result<CommandReply, ExecuteError> {
        if let Some(reply) = self
            .repo
            .logged_reply(incoming.command_id)
            .await
            .map_err(from_sqlx)?
        {
            tracing::debug!("duplicate command id; returning the first result");
            return Ok(reply);
        }
        let _serialised = self
            .locks
            .lock(&format!(
                "{}:{}",
                incoming.aggregate_type(),
                incoming.aggregate_id()
            ))
            .await;
        for attempt in 0..=self.limits.conflict_retries_max {
            match self.attempt(&incoming).await? {
                Attempt::Done(reply) => return Ok(reply),
                Attempt::Conflict => {
                    // Lost a race with another instance, or with a concurrent duplicate of this
                    // very command: if the latter, its result is now in the log.
                    if let Some(reply) = self
                        .repo
                        .logged_reply(incoming.command_id)
                        .await
                        .map_err(from_sqlx)?
                    {
                        return Ok(reply);
                    }
                    tracing::debug!(attempt, "optimistic-concurrency conflict; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        let rejection = Rejection::new(
            ErrorCode::Conflict,
            "the account is under heavy concurrent use; retry with the same command id",
        );
        // Not logged: contention is transient, so a retry with the same id may succeed.
        Ok(rejection.into_reply(incoming.command_id))
    }

    async fn attempt(&self, incoming: &IncomingCommand) -> Result<Attempt, ExecuteError> {
        let mut context = self.load(incoming.aggregate_id()).await?;
        let version_before = context.current_sequence;
        if let Some(expected) = incoming.expected_version
            && u64::try_from(version_before).ok() != Some(expected)
        {
            let rejection = Rejection::new(
                ErrorCode::Conflict,
                format!("expected version {expected}, but the account is at {version_before}"),
            )
            .with_details(serde_json::json!({"expected": expected, "actual": version_before}));
            return self.reject(incoming, rejection).await.map(Attempt::Done);
        }

        let sink = EventSink::<Account>::default();
        let handled = context
            .aggregate
            .handle(incoming.command.clone(), &(), &sink)
            .await;
        if let Err(error) = handled {
            return self
                .reject(incoming, Rejection::from(&error))
                .await
                .map(Attempt::Done);
        }
        let events = sink.collect().await;
        let state_after = context.aggregate.clone();
        let metadata = metadata(incoming).to_map();
        match self.store.commit(events, context, metadata).await {
            Ok(committed) => {
                let version = committed.last().map_or(version_before, |e| e.sequence);
                self.maybe_snapshot(
                    incoming.aggregate_id(),
                    version_before,
                    version,
                    &state_after,
                )
                .await;
                let version =
                    u64::try_from(version).map_err(|e| ExecuteError::Internal(Box::new(e)))?;
                Ok(Attempt::Done(repository::accepted_reply(
                    incoming.command_id,
                    incoming.aggregate_type(),
                    incoming.aggregate_id(),
                    version,
                )))
            }
            Err(AggregateError::AggregateConflict) => Ok(Attempt::Conflict),
            Err(AggregateError::DatabaseConnectionError(e)) => Err(ExecuteError::Unavailable(e)),
            Err(other) => Err(ExecuteError::Internal(Box::new(other))),
        }
    }

    /// The aggregate as of its last event: from our snapshot plus the events after it.
    pub async fn load(
        &self,
        aggregate_id: &str,
    ) -> Result<EventStoreAggregateContext<Account>, ExecuteError> {
        let snapshot = snapshots::load::<Account>(self.repo.pool(), aggregate_id)
            .await
            .map_err(from_sqlx)?;
        let (aggregate, current_sequence) = match snapshot {
            Some(s) => (s.state, s.last_sequence),
            None => (Account::default(), 0),
        };
        let mut context = EventStoreAggregateContext {
            aggregate_id: aggregate_id.to_owned(),
            aggregate,
            current_sequence,
            current_snapshot: None,
        };
        let events = cqrs_es::persist::PersistedEventRepository::get_last_events::<Account>(
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
            let envelope = cqrs_es::EventEnvelope::<Account>::try_from(event)
                .map_err(|e| ExecuteError::Internal(Box::new(e)))?;
            context.current_sequence = envelope.sequence;
            context.aggregate.apply(envelope.payload);
        }
        Ok(context)
    }

    async fn reject(
        &self,
        incoming: &IncomingCommand,
        rejection: Rejection,
    ) -> Result<CommandReply, ExecuteError> {
        let reply = rejection.into_reply(incoming.command_id);
        self.repo
            .log_rejection(
                incoming.command_id,
                incoming.aggregate_type(),
                incoming.aggregate_id(),
                &reply,
            )
            .await
            .map_err(from_sqlx)
    }

    async fn maybe_snapshot(
        &self,
        aggregate_id: &str,
        before: usize,
        after: usize,
        state: &Account,
    ) {
        if !snapshots::due(before, after, self.limits.snapshot_every) {
            return;
        }
        // A failed snapshot only costs load time later; the command already succeeded.
        if let Err(error) = snapshots::save(self.repo.pool(), aggregate_id, after, state).await {
            tracing::warn!(%error, aggregate_id, "snapshot not saved");
        }
    }
}

/// Metadata stored with every event of the command.
pub fn metadata(incoming: &IncomingCommand) -> EventMetadata {
    let mut metadata = EventMetadata::for_command(
        incoming.command_id,
        incoming.actor.clone(),
        chrono::Utc::now(),
    );
    metadata.trace_id = incoming.trace_id.clone();
    metadata.traceparent = incoming.traceparent.clone();
    metadata
}

/// Jittered exponential backoff: up to 1, 2, 4 ... 32 ms.
fn backoff(attempt: u32) -> Duration {
    let cap_us = 1_000u64 << attempt.min(5);
    Duration::from_micros(rand::rng().random_range(0..=cap_us))
}

/// Ids for durable commands published without one: stable across redeliveries of the same
/// stream message, so a redelivery is recognised as the same command.
pub fn derived_command_id(stream: &str, stream_sequence: u64) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("tally:{stream}:{stream_sequence}").as_bytes(),
    )
}
