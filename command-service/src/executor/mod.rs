//! Load, handle, commit, retry: the small executor cqrs-es 0.5 does not provide (its `execute`
//! returns neither the events nor their sequences and never retries a conflict).

use std::time::Duration;

use cqrs_es::Aggregate;
use cqrs_es::persist::PersistedEventStore;
use domain::transfer::{Transfer, TransferCommand};
use domain::{Account, CommandReply, ErrorCode, EventMetadata};
use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

mod attempt;
mod facts;
mod group_commit;
mod load;
mod transfer_at_once;

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
    /// Most commands queued on one account for its group; more are refused `rate_limited`.
    pub account_queue_max: usize,
    /// Settle transfer requests in their own write (`transfer_at_once`).
    pub transfers_at_once: bool,
}

/// What the executor needs of an aggregate besides cqrs-es's trait: its snapshots are JSON, and
/// its refusals become wire rejections.
pub trait Executable: Aggregate + Clone + Serialize + DeserializeOwned {
    fn rejection(error: &Self::Error) -> Rejection;
    /// A refusal of the sender (another owner's account), answered but never logged: the
    /// log would keep a probe of another owner's id as that command's answer.
    fn refuses_the_sender(error: &Self::Error) -> bool;
    /// The executor's in-memory cache of this aggregate type.
    fn cache(executor: &Executor) -> &AggregateCache<Self>;
}

impl Executable for Account {
    fn rejection(error: &Self::Error) -> Rejection {
        Rejection::from(error)
    }
    fn refuses_the_sender(error: &Self::Error) -> bool {
        error.refuses_the_sender()
    }
    fn cache(executor: &Executor) -> &AggregateCache<Self> {
        &executor.account_cache
    }
}

impl Executable for Transfer {
    fn rejection(error: &Self::Error) -> Rejection {
        Rejection::from(error)
    }
    fn refuses_the_sender(error: &Self::Error) -> bool {
        error.refuses_the_sender()
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
    /// Decided on the in-memory state, unchecked against the store, with nothing written
    /// that would have checked it: decide again on a fresh read.
    Unverified,
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

    /// The first reply of `incoming`'s command id, if it has one.
    async fn logged(
        &self,
        incoming: &IncomingCommand,
    ) -> Result<Option<CommandReply>, ExecuteError> {
        self.repo
            .logged_reply(incoming.command_id, &repository::LogKey::of(incoming))
            .await
            .map_err(from_sqlx)
    }

    /// Runs `incoming` exactly once per command id: a repeated id gets the first reply.
    #[tracing::instrument(skip_all, fields(command_id = %incoming.command_id, aggregate_id = %incoming.aggregate_id(), command = incoming.command.name(), trace_id = incoming.trace_id.as_deref().unwrap_or("")))]
    pub async fn execute(&self, incoming: IncomingCommand) -> Result<CommandReply, ExecuteError> {
        platform::telemetry::continue_trace(
            &tracing::Span::current(),
            incoming.traceparent.as_deref(),
        );
        // A token bound to an owner is checked by the domain, on the state each path decides
        // on under its lock (`AccountServices::owner`, `TransferFacts::owner`): not here, where
        // an id not yet opened would pass and then be decided as whatever it had become.
        if self.limits.group_commit && group_commit::groupable(&incoming) {
            // No log lookup first: a repeated id fails its group's write on the command log's
            // key, and the path alone then answers it from the log.
            return self.execute_grouped(incoming).await;
        }
        if self.limits.transfers_at_once
            && let Command::Transfer(TransferCommand::Request(request)) = &incoming.command
        {
            let request = request.clone();
            return self.run_transfer_at_once(incoming, request).await;
        }
        // Nor here: a repeated id's write fails on the command log's key (then the log answers
        // it), and a refusal or an empty outcome is answered from the log if the id is there.
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
        // The first try trusts the in-memory aggregate: a write on a stale one fails on its
        // sequence, and every other outcome is checked on a fresh read (`Attempt::Unverified`).
        let mut fresh = false;
        let mut conflicts = 0;
        while conflicts <= self.limits.conflict_retries_max {
            let outcome = self.attempt_once(&incoming, fresh).await?;
            fresh = true;
            match outcome {
                Attempt::Done(reply) => return Ok(reply),
                // Only ever once: every later attempt reads fresh.
                Attempt::Unverified => {}
                Attempt::Conflict => {
                    // Lost a race with another instance, or with a concurrent duplicate of this
                    // very command: if the latter, its result is now in the log.
                    if let Some(reply) = self.logged(&incoming).await? {
                        return Ok(reply);
                    }
                    tracing::debug!(conflicts, "optimistic-concurrency conflict; retrying");
                    if let Some(retries) = &self.conflict_retries {
                        retries.inc();
                    }
                    tokio::time::sleep(backoff(conflicts)).await;
                    conflicts += 1;
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
/// stream message, so a redelivery is recognised as the same command. The message's body and
/// `Authorization` value are part of the name: from the stream sequence alone (which every
/// publisher learns from its ack) another client could compute the id of the next header-less
/// command and claim it first.
pub fn derived_command_id(
    stream: &str,
    stream_sequence: u64,
    body: &[u8],
    authorization: &str,
) -> Uuid {
    let mut name = format!("tally:{stream}:{stream_sequence}:{authorization}:").into_bytes();
    name.extend_from_slice(body);
    Uuid::new_v5(&Uuid::NAMESPACE_OID, &name)
}
