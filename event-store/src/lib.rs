//! Tally's event store: the one owner of the tables `events`, `command_log`,
//! `aggregate_snapshots` and `relay_checkpoints`. Services and tools call this crate; none of
//! them names those tables.
//!
//! - [`EventStore::append`] is the one write: a decision's events, chain hashes and command-log
//!   rows in one statement, batched with other decisions' (`batch_writer`).
//! - An aggregate's history is read by postgres-es ([`EventStore::events_after`]), so the
//!   table stays in its layout; our columns (`global_position`, `tx_id`, `recorded_at`,
//!   `hash`) fill themselves in.
//! - Readers of everything (the relay, rebuilds, audit) read below the commit-safe horizon
//!   (`horizon`), never by position alone.
//! - Every database error is one of [`StoreError`]'s kinds.

use std::sync::Arc;

use cqrs_es::Aggregate;
use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
use domain::CommandReply;
use domain::hash_chain::{self, ChainHash};
use postgres_es::PostgresEventRepository;
use sqlx::PgPool;
use uuid::Uuid;

pub mod append;
pub mod audit;
mod batch_writer;
pub mod command_log;
pub mod commit_signal;
pub mod error;
pub mod history;
pub mod holds;
pub mod maintenance;
pub mod outbox;
pub mod row;
pub mod snapshots;

pub use append::{Append, NewEvent};
pub use batch_writer::WRITE_STATEMENTS_DEFAULT;
pub use command_log::{LogKey, LogRow, LoggedCommand};
pub use commit_signal::CommitSignal;
pub use error::{StoreError, classify};
pub use history::Horizon;
pub use outbox::{CommitPosition, RelayCheckpoint};
pub use row::{RawEvent, StoredEvent};

use append::ChainHeads;
use batch_writer::{BatchWriter, EventRow, Write};

#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
    reads: Arc<PostgresEventRepository>,
    heads: Arc<ChainHeads>,
    writer: BatchWriter,
    signal: Arc<CommitSignal>,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore").finish_non_exhaustive()
    }
}

impl EventStore {
    pub fn new(pool: PgPool) -> Self {
        Self::with_write_statements_max(pool, WRITE_STATEMENTS_DEFAULT)
    }

    /// With at most `statements_max` write statements in flight at once (see `batch_writer`).
    pub fn with_write_statements_max(pool: PgPool, statements_max: usize) -> Self {
        let signal = Arc::new(CommitSignal::default());
        EventStore {
            reads: Arc::new(PostgresEventRepository::new(pool.clone())),
            writer: BatchWriter::new(pool.clone(), Arc::clone(&signal), statements_max),
            signal,
            pool,
            heads: Arc::new(ChainHeads::default()),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// What this store's commits signal, for the relay of the same process.
    pub fn commit_signal(&self) -> Arc<CommitSignal> {
        Arc::clone(&self.signal)
    }

    /// Writes `append`: every event (with its chain hash) and every log row, or nothing. A
    /// taken sequence or command id is [`StoreError::Conflict`].
    pub async fn append(&self, append: Append) -> Result<(), StoreError> {
        if append.is_empty() {
            return Ok(());
        }
        let mut events = Vec::new();
        let mut hashes = Vec::new();
        let mut heads = Vec::new();
        for part in &append.aggregates {
            let Some(first) = part.first() else { continue };
            let part_hashes = chain_after(self, first)
                .await
                .map(|prev| append::chain(prev, part))?;
            for event in part {
                events.push(EventRow::of(event)?);
            }
            if let (Some(last), Some(hash)) = (part.last(), part_hashes.last()) {
                heads.push((last, *hash));
            }
            hashes.extend(part_hashes.iter().map(|h| h.to_vec()));
        }
        self.writer
            .write(Write {
                events,
                hashes,
                log: append.log,
            })
            .await?;
        for (last, hash) in heads {
            self.heads.remember(last, hash);
        }
        Ok(())
    }

    /// The events of `A`'s `aggregate_id` after `sequence`, in order, as postgres-es reads them.
    pub async fn events_after<A: Aggregate>(
        &self,
        aggregate_id: &str,
        sequence: usize,
    ) -> Result<Vec<SerializedEvent>, StoreError> {
        self.reads
            .get_last_events::<A>(aggregate_id, sequence)
            .await
            .map_err(error::from_postgres_es)
    }

    /// The command-log row of `command_id`, if the id was used.
    pub async fn logged(&self, command_id: Uuid) -> Result<Option<LoggedCommand>, StoreError> {
        Ok(sqlx::query_as!(
            LoggedCommand,
            r#"SELECT reply AS "reply: sqlx::types::Json<CommandReply>", actor, fingerprint
               FROM command_log WHERE command_id = $1"#,
            command_id
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Logs `row` unless its id already has a row; returns what the id answers to `key`
    /// (`row`'s own reply if it was written).
    pub async fn log_unless_logged(&self, row: LogRow) -> Result<CommandReply, StoreError> {
        let inserted = sqlx::query!(
            "INSERT INTO command_log (command_id, aggregate_type, aggregate_id, status, reply, actor, fingerprint)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (command_id) DO NOTHING",
            row.command_id,
            row.aggregate_type,
            row.aggregate_id,
            row.status,
            sqlx::types::Json(&*row.reply) as _,
            row.key.actor.as_deref(),
            row.key.fingerprint.as_slice(),
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        let Some(logged) = (if inserted == 1 {
            None
        } else {
            self.logged(row.command_id).await?
        }) else {
            return serde_json::from_str(row.reply.get())
                .map_err(|e| StoreError::internal("reading back a reply", e));
        };
        Ok(row.key.answer(logged))
    }

    /// Which of a transfer's steps its accounts recorded: one probe of the
    /// `events_transfer_step` index per account and step type.
    pub async fn transfer_steps_recorded(
        &self,
        transfer_id: Uuid,
        from: &str,
        to: &str,
    ) -> Result<domain::transfer::StepsRecorded, StoreError> {
        let found = sqlx::query!(
            "SELECT aggregate_id, event_type FROM events
             WHERE aggregate_type = 'account' AND aggregate_id IN ($2, $3)
               AND event_type IN ('TransferDebited', 'TransferCredited', 'TransferRefunded', 'TransferSettled')
               AND (payload -> event_type ->> 'transfer_id') = $1",
            transfer_id.to_string(),
            from,
            to,
        )
        .fetch_all(&self.pool)
        .await?;
        let has = |account: &str, event: &str| {
            found
                .iter()
                .any(|row| row.aggregate_id == account && row.event_type == event)
        };
        Ok(domain::transfer::StepsRecorded {
            debited: has(from, "TransferDebited"),
            credited: has(to, "TransferCredited"),
            refunded: has(from, "TransferRefunded"),
            settled: has(from, "TransferSettled"),
        })
    }
}

/// The chain hash `first` continues from: genesis for an aggregate's first event, the head
/// this instance wrote, or the stored predecessor's. Reading the predecessor outside the
/// insert is safe: stored rows never change, and if another writer takes the same sequence
/// first, the insert fails on the primary key.
async fn chain_after(store: &EventStore, first: &NewEvent) -> Result<ChainHash, StoreError> {
    if first.sequence <= 1 {
        return Ok(hash_chain::GENESIS);
    }
    let previous = first.sequence - 1;
    if let Some(hash) = store
        .heads
        .get(first.aggregate_type, &first.aggregate_id, previous)
    {
        return Ok(hash);
    }
    let stored = sqlx::query_scalar!(
        "SELECT hash FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
        first.aggregate_type,
        first.aggregate_id,
        i64::try_from(previous).map_err(|e| StoreError::internal("a sequence", e))?,
    )
    .fetch_optional(&store.pool)
    .await?;
    match stored {
        // A decision never skips a sequence: its predecessor was read before it was decided,
        // and stored rows are never deleted. Missing, the store lost rows under us.
        None => Err(StoreError::corrupt(format!(
            "{} {} has no event {previous} to follow",
            first.aggregate_type, first.aggregate_id
        ))),
        // A predecessor written before the chain existed has no hash: the chain restarts from
        // genesis there, and `tally audit verify` reports the unchained rows.
        Some(None) => Ok(hash_chain::GENESIS),
        Some(Some(hash)) => ChainHash::try_from(hash.as_slice()).map_err(|_| {
            StoreError::corrupt(format!("a stored chain hash of {} bytes", hash.len()))
        }),
    }
}
