//! The one command pipeline. Every command becomes a `Decision` over a set of aggregates (their
//! new events, the command-log rows, the replies), decided by one of three deciders:
//!
//! - `alone`: one command on its aggregate (`Aggregate::handle`);
//! - `group_commit`: the commands queued on one hot account, decided one after the other;
//! - `transfer_at_once`: a transfer request over the transfer and both accounts.
//!
//! One `commit` writes a decision through the event store, and one retry loop (`pipeline`)
//! decides again when a write lost a race or a decision made on memory could not be checked
//! by its write. cqrs-es earns its place as the `Aggregate` trait; its `commit` is not used.

use std::time::Duration;

use cqrs_es::Aggregate;
use domain::ledger::{Hold, Transaction};
use domain::transfer::{Transfer, TransferCommand};
use domain::{Account, CommandReply, EventMetadata};
use event_store::{EventStore, StoreError};
use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

mod alone;
mod decision;
mod facts;
mod group_commit;
mod ledger;
mod load;
mod pipeline;
mod transfer_at_once;

pub use load::Loaded;

use crate::aggregate_cache::AggregateCache;
use crate::aggregate_locks::AggregateLocks;
use crate::incoming::{Command, IncomingCommand};
use crate::rejection::Rejection;
use decision::Changed;

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

    fn internal(what: impl Into<String>) -> ExecuteError {
        ExecuteError::Internal(what.into().into())
    }
}

impl From<StoreError> for ExecuteError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => ExecuteError::Unavailable(Box::new(error)),
            // A lost race the pipeline did not expect here is a bug, not an outage.
            other => ExecuteError::Internal(Box::new(other)),
        }
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
    /// A new state of this type, for the executor to remember after the commit.
    fn changed(changed: Changed<Self>) -> decision::NewState;
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
    fn changed(changed: Changed<Self>) -> decision::NewState {
        decision::NewState::Account(changed)
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
    fn changed(changed: Changed<Self>) -> decision::NewState {
        decision::NewState::Transfer(changed)
    }
}

impl Executable for Transaction {
    fn rejection(error: &Self::Error) -> Rejection {
        Rejection::from(error)
    }
    fn refuses_the_sender(error: &Self::Error) -> bool {
        error.refuses_the_sender()
    }
    fn cache(executor: &Executor) -> &AggregateCache<Self> {
        &executor.transaction_cache
    }
    fn changed(changed: Changed<Self>) -> decision::NewState {
        decision::NewState::Transaction(changed)
    }
}

impl Executable for Hold {
    fn rejection(error: &Self::Error) -> Rejection {
        Rejection::from(error)
    }
    fn refuses_the_sender(error: &Self::Error) -> bool {
        error.refuses_the_sender()
    }
    fn cache(executor: &Executor) -> &AggregateCache<Self> {
        &executor.hold_cache
    }
    fn changed(changed: Changed<Self>) -> decision::NewState {
        decision::NewState::Hold(changed)
    }
}

pub struct Executor {
    store: EventStore,
    locks: AggregateLocks,
    account_cache: AggregateCache<Account>,
    transfer_cache: AggregateCache<Transfer>,
    transaction_cache: AggregateCache<Transaction>,
    hold_cache: AggregateCache<Hold>,
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

impl Executor {
    pub fn new(store: EventStore, limits: ExecutorLimits) -> Self {
        Executor {
            store,
            locks: AggregateLocks::default(),
            account_cache: AggregateCache::new(limits.aggregate_cache_max),
            transfer_cache: AggregateCache::new(limits.aggregate_cache_max),
            transaction_cache: AggregateCache::new(limits.aggregate_cache_max),
            hold_cache: AggregateCache::new(limits.aggregate_cache_max),
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

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// What the command log answers to `incoming` if its id was used: the first reply to a
    /// retry, `idempotency_mismatch` to any other use.
    pub(super) async fn logged(
        &self,
        incoming: &IncomingCommand,
    ) -> Result<Option<CommandReply>, ExecuteError> {
        let logged = self.store.logged(incoming.command_id).await?;
        Ok(logged.map(|row| crate::idempotency::log_key(incoming).answer(row)))
    }

    /// Runs `incoming` exactly once per command id: a repeated id gets the first reply.
    #[tracing::instrument(skip_all, fields(command_id = %incoming.command_id, aggregate_id = %incoming.aggregate_id(), command = incoming.command.name(), trace_id = incoming.trace_id.as_deref().unwrap_or("")))]
    pub async fn execute(&self, incoming: IncomingCommand) -> Result<CommandReply, ExecuteError> {
        platform::telemetry::continue_trace(
            &tracing::Span::current(),
            incoming.traceparent.as_deref(),
        );
        // A token bound to an owner is checked by the domain, on the state each decider
        // decides on under its lock (`AccountServices::owner`, `TransferFacts::owner`): not
        // here, where an id not yet opened would pass and then be decided as whatever it had
        // become. Nor is the log looked up first: a repeated id's write fails on the command
        // log's key, and the pipeline then answers it from the log.
        if self.limits.group_commit && group_commit::groupable(&incoming) {
            return group_commit::run(self, incoming).await;
        }
        if self.limits.transfers_at_once
            && let Command::Transfer(TransferCommand::Request(request)) = &incoming.command
        {
            let request = request.clone();
            return transfer_at_once::run(self, incoming, request).await;
        }
        if incoming.command.is_ledger() {
            let command_id = incoming.command_id;
            let mut replies =
                ledger::run(self, std::slice::from_ref(&incoming), ledger::Mode::Alone).await?;
            return match (replies.pop(), replies.is_empty()) {
                (Some(reply), true) => Ok(reply),
                _ => Err(ExecuteError::internal(format!(
                    "command {command_id} got {} replies",
                    replies.len() + 1
                ))),
            };
        }
        alone::run(self, incoming).await
    }

    /// Runs `commands` all or nothing, in one write: one reply per command, in order. Each
    /// keeps its own command id; a retry of the same batch gets the first replies.
    #[tracing::instrument(skip_all, fields(commands = commands.len()))]
    pub async fn execute_atomic(
        &self,
        commands: Vec<IncomingCommand>,
    ) -> Result<Vec<CommandReply>, ExecuteError> {
        ledger::run(self, &commands, ledger::Mode::AtomicBatch).await
    }

    /// The aggregate as of its last event (from memory or our snapshot, plus the events after
    /// it, always read).
    pub async fn load<A: Executable>(&self, aggregate_id: &str) -> Result<Loaded<A>, ExecuteError> {
        load::load(self, aggregate_id).await
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
