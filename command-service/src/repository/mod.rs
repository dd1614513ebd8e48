//! Our `PersistedEventRepository`: postgres-es does the reads and the streaming of history; the
//! write is ours, so the command log row is written in the same statement (and so the same
//! transaction) as the command's events.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use cqrs_es::Aggregate;
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use domain::CommandReply;
use domain::hash_chain;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

mod batch_writer;
pub use batch_writer::WRITE_STATEMENTS_DEFAULT;
mod group_persist;
pub mod idempotency;

use crate::commit_signal::CommitSignal;
use batch_writer::{BatchWriter, EventRow, Write};

pub use group_persist::LogRow;
pub use idempotency::LogKey;

/// The reply an accepted command gets; a pure function of what was committed, so the command
/// log (written in `persist`) and the executor agree without passing it around.
pub fn accepted_reply(
    command_id: Uuid,
    aggregate_type: &str,
    aggregate_id: &str,
    version: u64,
) -> CommandReply {
    CommandReply::Accepted {
        command_id,
        aggregate_id: aggregate_id.to_owned(),
        version,
        consistency_token: consistency_token(aggregate_type, aggregate_id, version),
    }
}

/// Opaque to clients: the query-service waits until the read model has applied this version of
/// this aggregate. A transfer's token waits for more: until the transfer is settled (completed
/// or failed), which is what its sender wants to know.
pub fn consistency_token(aggregate_type: &str, aggregate_id: &str, version: u64) -> String {
    if aggregate_type == domain::transfer::Transfer::TYPE {
        return format!("{aggregate_type}:{aggregate_id}:settled");
    }
    format!("{aggregate_type}:{aggregate_id}:{version}")
}

/// The index that allows one debit, credit, refund and settle per (account, transfer)
/// (migration 0006).
const TRANSFER_STEP_INDEX: &str = "events_transfer_step";

/// A transfer step was already applied to the account under another command id.
#[derive(Debug, thiserror::Error)]
#[error("this transfer step was already applied to the account")]
pub struct StepAlreadyApplied;

/// SQL state of a unique violation: a lost optimistic-concurrency race (events primary key) or
/// a concurrent duplicate of the same command id (command log primary key).
const UNIQUE_VIOLATION: &str = "23505";

/// Chain heads this instance committed, so the next append to a warm aggregate need not read
/// its predecessor's hash back. Stored rows never change, so a head we wrote stays true.
const CHAIN_HEADS_MAX: usize = 10_000;

type ChainHeads = LruCache<(String, String), (usize, hash_chain::ChainHash)>;

#[derive(Clone)]
pub struct TallyRepository {
    pool: PgPool,
    reads: Arc<PostgresEventRepository>,
    heads: Arc<Mutex<ChainHeads>>,
    writer: BatchWriter,
    signal: Arc<CommitSignal>,
}

impl std::fmt::Debug for TallyRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TallyRepository").finish_non_exhaustive()
    }
}

/// Maps a database error to cqrs-es's categories: clashes are conflicts, an unreachable
/// database is a connection error (the client is told `unavailable`).
pub fn persistence_error(error: sqlx::Error) -> PersistenceError {
    if let Some(code) = error.as_database_error().and_then(|db| db.code()) {
        if code == UNIQUE_VIOLATION
            && error.as_database_error().and_then(|db| db.constraint()) == Some(TRANSFER_STEP_INDEX)
        {
            return PersistenceError::UnknownError(Box::new(StepAlreadyApplied));
        }
        if code == UNIQUE_VIOLATION {
            return PersistenceError::OptimisticLockError;
        }
        // Transaction rollback (40): a deadlock (40P01) between two instances' writes that
        // wait on each other's keys, or a serialization failure. The statement wrote nothing,
        // so it is a lost race like any other: decide again on fresh reads.
        if code.starts_with("40") {
            return PersistenceError::OptimisticLockError;
        }
        // Connection exceptions (08), insufficient resources (53) and operator intervention
        // such as a shutdown or recovery in progress (57) are outages, not bugs.
        if ["08", "53", "57"]
            .iter()
            .any(|class| code.starts_with(class))
        {
            return PersistenceError::ConnectionError(Box::new(error));
        }
    }
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => PersistenceError::ConnectionError(Box::new(error)),
        other => PersistenceError::UnknownError(Box::new(other)),
    }
}

impl TallyRepository {
    pub fn new(pool: PgPool) -> Self {
        Self::with_write_statements_max(pool, WRITE_STATEMENTS_DEFAULT)
    }

    /// With at most `statements_max` write statements in flight at once (see `batch_writer`).
    pub fn with_write_statements_max(pool: PgPool, statements_max: usize) -> Self {
        let signal = Arc::new(CommitSignal::default());
        TallyRepository {
            reads: Arc::new(PostgresEventRepository::new(pool.clone())),
            writer: BatchWriter::new(pool.clone(), Arc::clone(&signal), statements_max),
            signal,
            pool,
            heads: Arc::new(Mutex::new(LruCache::new(
                NonZeroUsize::new(CHAIN_HEADS_MAX).unwrap_or(NonZeroUsize::MIN),
            ))),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// What this repository's commits signal, for the relay of the same process.
    pub fn commit_signal(&self) -> Arc<CommitSignal> {
        Arc::clone(&self.signal)
    }

    /// What the command log answers to a command with `key` under `command_id`, if the id was
    /// used: its first reply to a retry, `idempotency_mismatch` to any other use (see
    /// `idempotency`).
    pub async fn logged_reply(
        &self,
        command_id: Uuid,
        key: &LogKey,
    ) -> Result<Option<CommandReply>, sqlx::Error> {
        let row: Option<LoggedRow> = sqlx::query_as(
            "SELECT reply, actor, fingerprint FROM command_log WHERE command_id = $1",
        )
        .bind(command_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(reply, actor, fingerprint)| key.answer(reply.0, actor, fingerprint)))
    }

    /// Records a rejection of the command with `key`; if the id already has a result, returns
    /// what that answers to this command instead.
    pub async fn log_rejection_for(
        &self,
        key: &LogKey,
        aggregate_type: &str,
        aggregate_id: &str,
        reply: &CommandReply,
    ) -> Result<CommandReply, sqlx::Error> {
        let command_id = reply.command_id();
        let inserted = sqlx::query(
            "INSERT INTO command_log (command_id, aggregate_type, aggregate_id, status, reply, actor, fingerprint)
             VALUES ($1, $2, $3, 'rejected', $4, $5, $6) ON CONFLICT (command_id) DO NOTHING",
        )
        .bind(command_id)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sqlx::types::Json(reply))
        .bind(key.actor.as_deref())
        .bind(key.fingerprint.as_slice())
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(reply.clone());
        }
        Ok(self
            .logged_reply(command_id, key)
            .await?
            .unwrap_or_else(|| reply.clone()))
    }

    /// Records the rejection of a durable command whose result was not logged by the executor
    /// (refused before it was read, or an answer the executor does not log). The row is bound
    /// to no command: any later use of the id is answered `idempotency_mismatch`, so nobody
    /// learns from it what was refused.
    pub async fn log_rejection(
        &self,
        command_id: Uuid,
        aggregate_type: &str,
        aggregate_id: &str,
        reply: &CommandReply,
    ) -> Result<CommandReply, sqlx::Error> {
        debug_assert_eq!(command_id, reply.command_id());
        self.log_rejection_for(&LogKey::unread(), aggregate_type, aggregate_id, reply)
            .await
    }
}

/// A command log row as the lookups read it: the reply and the key it was logged with.
type LoggedRow = (
    sqlx::types::Json<CommandReply>,
    Option<String>,
    Option<Vec<u8>>,
);

impl TallyRepository {
    /// Which of a transfer's steps its accounts recorded: one probe of the
    /// `events_transfer_step` index per account and step type.
    pub async fn transfer_steps_recorded(
        &self,
        transfer_id: Uuid,
        from: &str,
        to: &str,
    ) -> Result<domain::transfer::StepsRecorded, sqlx::Error> {
        let found: Vec<(String, String)> = sqlx::query_as(
            "SELECT aggregate_id, event_type FROM events
             WHERE aggregate_type = 'account' AND aggregate_id IN ($2, $3)
               AND event_type IN ('TransferDebited', 'TransferCredited', 'TransferRefunded', 'TransferSettled')
               AND (payload -> event_type ->> 'transfer_id') = $1",
        )
        .bind(transfer_id.to_string())
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        let has = |account: &str, event: &str| {
            found
                .iter()
                .any(|(a, e)| a.as_str() == account && e.as_str() == event)
        };
        Ok(domain::transfer::StepsRecorded {
            debited: has(from, "TransferDebited"),
            credited: has(to, "TransferCredited"),
            refunded: has(from, "TransferRefunded"),
            settled: has(from, "TransferSettled"),
        })
    }

    /// The chain hash of each new event, continuing from the stored predecessor of the first.
    /// Reading the predecessor outside the insert is safe: stored rows never change, and if
    /// another writer takes the same sequence first, the insert fails on the primary key.
    pub(crate) async fn chain_hashes(
        &self,
        events: &[SerializedEvent],
    ) -> Result<Vec<Vec<u8>>, PersistenceError> {
        let Some(first) = events.first() else {
            return Ok(Vec::new());
        };
        let key = (first.aggregate_type.clone(), first.aggregate_id.clone());
        let cached = self
            .heads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|(sequence, _)| *sequence + 1 == first.sequence)
            .map(|(_, hash)| *hash);
        let mut prev = if first.sequence <= 1 {
            hash_chain::GENESIS
        } else if let Some(hash) = cached {
            hash
        } else {
            let stored: Option<Option<Vec<u8>>> = sqlx::query_scalar(
                "SELECT hash FROM events
                 WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
            )
            .bind(&first.aggregate_type)
            .bind(&first.aggregate_id)
            .bind(
                i64::try_from(first.sequence - 1)
                    .map_err(|e| PersistenceError::UnknownError(Box::new(e)))?,
            )
            .fetch_optional(&self.pool)
            .await
            .map_err(persistence_error)?;
            // A predecessor written before the chain existed has no hash: the chain restarts
            // from genesis there, and `tally audit verify` reports the unchained rows.
            stored
                .flatten()
                .and_then(|h| hash_chain::ChainHash::try_from(h.as_slice()).ok())
                .unwrap_or(hash_chain::GENESIS)
        };
        let mut hashes = Vec::with_capacity(events.len());
        for event in events {
            let hash = hash_chain::event_hash(
                &prev,
                &hash_chain::ChainedEvent {
                    aggregate_type: &event.aggregate_type,
                    aggregate_id: &event.aggregate_id,
                    sequence: event.sequence as u64,
                    event_type: &event.event_type,
                    event_version: &event.event_version,
                    payload: &event.payload,
                    metadata: &event.metadata,
                },
            );
            hashes.push(hash.to_vec());
            prev = hash;
        }
        Ok(hashes)
    }
}

impl TallyRepository {
    /// After a commit: `last` (the last event written) and the hashes written with it.
    fn remember_head(&self, last: &SerializedEvent, hashes: &[Vec<u8>]) {
        if let Some(head) = hashes
            .last()
            .and_then(|h| hash_chain::ChainHash::try_from(h.as_slice()).ok())
        {
            self.heads.lock().unwrap_or_else(|p| p.into_inner()).put(
                (last.aggregate_type.clone(), last.aggregate_id.clone()),
                (last.sequence, head),
            );
        }
    }
}

impl PersistedEventRepository for TallyRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.reads.get_events::<A>(aggregate_id).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.reads
            .get_last_events::<A>(aggregate_id, last_sequence)
            .await
    }

    /// cqrs-es's own snapshots are never used (they corrupt state in 0.5.0); ours live in
    /// `snapshots.rs`.
    async fn get_snapshot<A: Aggregate>(
        &self,
        _aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        Ok(None)
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        _snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let Some(key) = events
            .last()
            .and_then(|e| LogKey::from_metadata(&e.metadata))
        else {
            if events.is_empty() {
                return Ok(());
            }
            return Err(PersistenceError::UnknownError(
                "event metadata lacks the command's fingerprint".into(),
            ));
        };
        // The fingerprint only rides along to here: the events are stored without it.
        let events: Vec<SerializedEvent> = events
            .iter()
            .cloned()
            .map(|mut event| {
                if let Some(metadata) = event.metadata.as_object_mut() {
                    metadata.remove(idempotency::FINGERPRINT_METADATA);
                }
                event
            })
            .collect();
        let events = events.as_slice();
        let Some(last) = events.last() else {
            return Ok(());
        };
        let command_id = last
            .metadata
            .get(domain::metadata::KEY_COMMAND_ID)
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| {
                PersistenceError::UnknownError("event metadata lacks a command_id".into())
            })?;
        let version = u64::try_from(last.sequence)
            .map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
        let reply = accepted_reply(
            command_id,
            &last.aggregate_type,
            &last.aggregate_id,
            version,
        );

        let hashes = self.chain_hashes(events).await?;
        // The events (whose primary key is the concurrency check), their chain hashes and the
        // command log row stand or fall together, in one statement with other commands' writes.
        self.writer
            .write(Write {
                events: EventRow::all(events).map_err(persistence_error)?,
                hashes: hashes.clone(),
                log: vec![LogRow::of(
                    &reply,
                    &key,
                    &last.aggregate_type,
                    &last.aggregate_id,
                )],
            })
            .await
            .map_err(persistence_error)?;
        self.remember_head(last, &hashes);
        Ok(())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        self.reads.stream_events::<A>(aggregate_id).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        self.reads.stream_all_events::<A>().await
    }
}
