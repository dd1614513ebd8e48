//! Load, handle, commit, retry: the small executor cqrs-es 0.5 does not provide (its `execute`
//! returns neither the events nor their sequences and never retries a conflict).

use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateError, EventStore};
use domain::transfer::Transfer;
use domain::{Account, CommandReply, ErrorCode, EventMetadata};
use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

mod facts;
mod group_commit;
mod load;

use crate::aggregate_cache::AggregateCache;
use crate::aggregate_locks::AggregateLocks;
use crate::incoming::{Command, IncomingCommand};
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
    /// Aggregates of each type kept in memory (0: none).
    pub aggregate_cache_max: usize,
    /// Commit commands queued on one account together (`group_commit`).
    pub group_commit: bool,
}

/// What the executor needs of an aggregate besides cqrs-es's trait: its snapshots are JSON, and
/// its refusals become wire rejections.
pub trait Executable: Aggregate + Clone + Serialize + DeserializeOwned {
    fn rejection(error: &Self::Error) -> Rejection;
    /// The executor's in-memory cache of this aggregate type.
    fn cache(executor: &Executor) -> &AggregateCache<Self>;
}

impl Executable for Account {
    fn rejection(error: &Self::Error) -> Rejection {
        Rejection::from(error)
    }
    fn cache(executor: &Executor) -> &AggregateCache<Self> {
        &executor.account_cache
    }
}

impl Executable for Transfer {
    fn rejection(error: &Self::Error) -> Rejection {
        Rejection::from(error)
    }
    fn cache(executor: &Executor) -> &AggregateCache<Self> {
        &executor.transfer_cache
    }
}

pub struct Executor {
    repo: TallyRepository,
    accounts: PersistedEventStore<TallyRepository, Account>,
    transfers: PersistedEventStore<TallyRepository, Transfer>,
    locks: AggregateLocks,
    account_cache: AggregateCache<Account>,
    transfer_cache: AggregateCache<Transfer>,
    groups: group_commit::Groups,
    limits: ExecutorLimits,
    conflict_retries: Option<prometheus::IntCounter>,
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
            accounts: PersistedEventStore::new_event_store(repo.clone())
                .with_upcasters(domain::account::upcast::account_upcasters()),
            transfers: PersistedEventStore::new_event_store(repo.clone()),
            repo,
            locks: AggregateLocks::default(),
            account_cache: AggregateCache::new(limits.aggregate_cache_max),
            transfer_cache: AggregateCache::new(limits.aggregate_cache_max),
            groups: group_commit::Groups::default(),
            limits,
            conflict_retries: None,
        }
    }

    /// Counts optimistic-concurrency retries on `counter`.
    pub fn with_conflict_counter(mut self, counter: prometheus::IntCounter) -> Self {
        self.conflict_retries = Some(counter);
        self
    }

    pub fn repository(&self) -> &TallyRepository {
        &self.repo
    }

    /// Runs `incoming` exactly once per command id: a repeated id gets the first reply.
    #[tracing::instrument(skip_all, fields(command_id = %incoming.command_id, aggregate_id = %incoming.aggregate_id(), command = incoming.command.name(), trace_id = incoming.trace_id.as_deref().unwrap_or("")))]
    pub async fn execute(&self, incoming: IncomingCommand) -> Result<CommandReply, ExecuteError> {
        platform::telemetry::continue_trace(
            &tracing::Span::current(),
            incoming.traceparent.as_deref(),
        );
        // Before anything else, even a logged reply: another owner's results are not ours to see.
        if let Some(owner) = &incoming.owner
            && !self.owns(owner, &incoming.command).await?
        {
            // Not recorded, and worded as for a missing account: no existence is leaked.
            return Ok(
                Rejection::from(&domain::AccountError::NotFound).into_reply(incoming.command_id)
            );
        }
        if let Some(reply) = self
            .repo
            .logged_reply(incoming.command_id)
            .await
            .map_err(from_sqlx)?
        {
            tracing::debug!("duplicate command id; returning the first result");
            return Ok(reply);
        }
        if self.limits.group_commit && group_commit::groupable(&incoming) {
            return self.execute_grouped(incoming).await;
        }
        self.run_alone(incoming).await
    }

    /// As `execute` past its checks, for a command of a group that could not be committed.
    async fn execute_alone(&self, incoming: IncomingCommand) -> Result<CommandReply, ExecuteError> {
        if let Some(reply) = self
            .repo
            .logged_reply(incoming.command_id)
            .await
            .map_err(from_sqlx)?
        {
            return Ok(reply);
        }
        self.run_alone(incoming).await
    }

    /// Under the aggregate's lock: load, decide, commit, and retry a lost race.
    async fn run_alone(&self, incoming: IncomingCommand) -> Result<CommandReply, ExecuteError> {
        let _serialised = self
            .locks
            .lock(&format!(
                "{}:{}",
                incoming.aggregate_type(),
                incoming.aggregate_id()
            ))
            .await;
        for attempt in 0..=self.limits.conflict_retries_max {
            let outcome = match &incoming.command {
                Command::Account(command) => {
                    let services = self.account_services(command).await?;
                    self.attempt(&self.accounts, &incoming, command.clone(), services)
                        .await?
                }
                Command::Transfer(command) => {
                    let facts = self.transfer_facts(command).await?;
                    self.attempt(&self.transfers, &incoming, command.clone(), facts)
                        .await?
                }
            };
            match outcome {
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
                    if let Some(retries) = &self.conflict_retries {
                        retries.inc();
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        let rejection = Rejection::new(
            ErrorCode::Conflict,
            format!(
                "the {} is under heavy concurrent use; retry with the same command id",
                incoming.aggregate_type()
            ),
        );
        // Not logged: contention is transient, so a retry with the same id may succeed.
        Ok(rejection.into_reply(incoming.command_id))
    }

    async fn attempt<A: Executable>(
        &self,
        store: &PersistedEventStore<TallyRepository, A>,
        incoming: &IncomingCommand,
        command: A::Command,
        services: A::Services,
    ) -> Result<Attempt, ExecuteError> {
        let aggregate_id = incoming.aggregate_id();
        let mut context = self.load::<A>(&aggregate_id).await?;
        let version_before = context.current_sequence;
        if let Some(expected) = incoming.expected_version
            && u64::try_from(version_before).ok() != Some(expected)
        {
            let rejection = Rejection::new(
                ErrorCode::Conflict,
                format!(
                    "expected version {expected}, but the {} is at {version_before}",
                    A::TYPE
                ),
            )
            .with_details(serde_json::json!({"expected": expected, "actual": version_before}));
            return self.reject(incoming, rejection).await.map(Attempt::Done);
        }

        let sink = EventSink::<A>::default();
        let handled = context.aggregate.handle(command, &services, &sink).await;
        if let Err(error) = handled {
            return self
                .reject(incoming, A::rejection(&error))
                .await
                .map(Attempt::Done);
        }
        let events = sink.collect().await;
        let state_after = context.aggregate.clone();
        let metadata = metadata(incoming).to_map();
        let accepted = |version: usize| -> Result<Attempt, ExecuteError> {
            let version =
                u64::try_from(version).map_err(|e| ExecuteError::Internal(Box::new(e)))?;
            Ok(Attempt::Done(repository::accepted_reply(
                incoming.command_id,
                A::TYPE,
                &aggregate_id,
                version,
            )))
        };
        match store.commit(events, context, metadata).await {
            Ok(committed) => {
                let version = committed.last().map_or(version_before, |e| e.sequence);
                self.maybe_snapshot(&aggregate_id, version_before, version, &state_after)
                    .await;
                A::cache(self).put(&aggregate_id, state_after, version);
                accepted(version)
            }
            Err(AggregateError::AggregateConflict) => Ok(Attempt::Conflict),
            Err(AggregateError::UnexpectedError(error))
                if error.is::<repository::StepAlreadyApplied>() =>
            {
                // The same transfer step under another command id got there first: this one
                // changes nothing, which is what a repeated step must do.
                tracing::debug!("transfer step already applied");
                accepted(version_before)
            }
            Err(AggregateError::DatabaseConnectionError(e)) => Err(ExecuteError::Unavailable(e)),
            Err(other) => Err(ExecuteError::Internal(other.to_string().into())),
        }
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
                &incoming.aggregate_id(),
                &reply,
            )
            .await
            .map_err(from_sqlx)
    }

    async fn maybe_snapshot<A: Executable>(
        &self,
        aggregate_id: &str,
        before: usize,
        after: usize,
        state: &A,
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
    if let Some(correlation_id) = incoming.correlation_id {
        metadata.correlation_id = correlation_id;
    }
    if let Some(causation_id) = incoming.causation_id {
        metadata.causation_id = causation_id;
    }
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
