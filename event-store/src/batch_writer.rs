//! Group commit across aggregates: every command's write (its events, their chain hashes and
//! its command-log rows) goes through one queue, and whatever queued while the previous
//! statements were in flight is written in one statement, so one round trip and one WAL flush
//! serve many commands of many aggregates.
//!
//! All or nothing per statement: if a combined statement fails (one aggregate lost a race, one
//! command id was already taken, a transfer step was already applied), each write in it is
//! retried in a statement of its own, so only the write at fault gets the error and the others
//! are not held back by it.

use std::sync::{Arc, OnceLock};

use serde_json::value::RawValue;
use sqlx::PgPool;
use sqlx::types::Json;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::append::NewEvent;
use crate::command_log::LogRow;
use crate::commit_signal::CommitSignal;

/// Statements in flight at once unless configured (`TALLY_WRITE_STATEMENTS_MAX`); more writes
/// than this wait and go in the next statement.
pub const WRITE_STATEMENTS_DEFAULT: usize = 4;
/// Most writes (commands or command groups) combined in one statement.
const WRITES_PER_STATEMENT_MAX: usize = 256;
/// Writes waiting for a statement before a new one waits for room.
const QUEUE_MAX: usize = 4096;

/// One write: events (each aggregate's consecutive), their chain hashes, and log rows.
#[derive(Debug)]
pub(crate) struct Write {
    pub(crate) events: Vec<EventRow>,
    pub(crate) hashes: Vec<Vec<u8>>,
    pub(crate) log: Vec<LogRow>,
}

/// An event as it is inserted: payload and metadata already JSON text, so a write queued for
/// the writer task owns two strings per event rather than deep copies of two `Value` trees,
/// and binding them is a copy rather than a second serialisation.
#[derive(Debug)]
pub(crate) struct EventRow {
    aggregate_type: &'static str,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: Box<RawValue>,
    metadata: Box<RawValue>,
}

impl EventRow {
    pub(crate) fn of(event: &NewEvent) -> Result<EventRow, sqlx::Error> {
        let encode = |e: serde_json::Error| sqlx::Error::Encode(Box::new(e));
        Ok(EventRow {
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id.clone(),
            sequence: i64::try_from(event.sequence)
                .map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            payload: serde_json::value::to_raw_value(&event.payload).map_err(encode)?,
            metadata: serde_json::value::to_raw_value(&event.metadata).map_err(encode)?,
        })
    }
}

struct Queued {
    write: Write,
    done: oneshot::Sender<Result<(), sqlx::Error>>,
}

#[derive(Clone)]
pub(crate) struct BatchWriter {
    pool: PgPool,
    /// Told after every commit, so the relay publishes without polling.
    signal: Arc<CommitSignal>,
    /// Statements in flight at once (at least 1).
    statements_max: usize,
    /// Started by the first write, so a repository can be made outside a runtime.
    queue: Arc<OnceLock<mpsc::Sender<Queued>>>,
}

impl std::fmt::Debug for BatchWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchWriter").finish_non_exhaustive()
    }
}

impl BatchWriter {
    /// The writer task starts with the first write and ends when the last clone of this is
    /// dropped and the queue is empty.
    pub(crate) fn new(
        pool: PgPool,
        signal: Arc<CommitSignal>,
        statements_max: usize,
    ) -> BatchWriter {
        BatchWriter {
            pool,
            signal,
            statements_max: statements_max.max(1),
            queue: Arc::new(OnceLock::new()),
        }
    }

    /// Writes `write`, alone or with others; its own outcome either way.
    pub(crate) async fn write(&self, write: Write) -> Result<(), sqlx::Error> {
        let queue = self.queue.get_or_init(|| {
            let (queue, incoming) = mpsc::channel(QUEUE_MAX);
            tokio::spawn(run(
                self.pool.clone(),
                Arc::clone(&self.signal),
                self.statements_max,
                incoming,
            ));
            queue
        });
        let (done, outcome) = oneshot::channel();
        queue
            .send(Queued { write, done })
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        // The statement runs on a task of its own, so a caller that goes away cannot cancel
        // it half way; only a writer task that died leaves this unanswered.
        outcome.await.unwrap_or(Err(sqlx::Error::WorkerCrashed))
    }
}

async fn run(
    pool: PgPool,
    signal: Arc<CommitSignal>,
    statements_max: usize,
    mut incoming: mpsc::Receiver<Queued>,
) {
    let writers = Arc::new(Semaphore::new(statements_max));
    loop {
        // A free writer first: while none is free, writes pile up and go out together.
        let Ok(permit) = Arc::clone(&writers).acquire_owned().await else {
            return;
        };
        let Some(first) = incoming.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < WRITES_PER_STATEMENT_MAX {
            match incoming.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (pool, signal) = (pool.clone(), Arc::clone(&signal));
        tokio::spawn(async move {
            write_batch(&pool, &signal, batch).await;
            drop(permit);
        });
    }
}

async fn write_batch(pool: &PgPool, signal: &Arc<CommitSignal>, batch: Vec<Queued>) {
    let writes: Vec<&Write> = batch.iter().map(|q| &q.write).collect();
    match insert(pool, &writes).await {
        Ok(()) => {
            signal.committed(pool);
            for queued in batch {
                let _ = queued.done.send(Ok(()));
            }
        }
        Err(error) if batch.len() == 1 => {
            if let Some(queued) = batch.into_iter().next() {
                let _ = queued.done.send(Err(error));
            }
        }
        Err(error) => {
            tracing::debug!(%error, writes = batch.len(), "combined write failed; writing each alone");
            let alone = batch.into_iter().map(|queued| async move {
                let outcome = insert(pool, &[&queued.write]).await;
                if outcome.is_ok() {
                    signal.committed(pool);
                }
                let _ = queued.done.send(outcome);
            });
            futures::future::join_all(alone).await;
        }
    }
}

/// One statement, so one implicit transaction: every event and log row of `writes`, or none.
async fn insert(pool: &PgPool, writes: &[&Write]) -> Result<(), sqlx::Error> {
    let events = writes.iter().flat_map(|w| w.events.iter());
    let log = writes.iter().flat_map(|w| w.log.iter());
    // Bound as `_`: sqlx checks arrays of plain types, but not of `Json` wrappers of borrowed
    // text; the SQL's casts name every type.
    sqlx::query!(
        "WITH logged AS (
             INSERT INTO command_log (command_id, aggregate_type, aggregate_id, status, reply, actor, fingerprint)
             SELECT * FROM UNNEST($9::uuid[], $10::text[], $11::text[], $12::text[], $13::jsonb[], $14::text[], $15::bytea[])
         )
         INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, hash)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[], $8::bytea[])",
        events.clone().map(|e| e.aggregate_type).collect::<Vec<_>>() as _,
        events.clone().map(|e| e.aggregate_id.as_str()).collect::<Vec<_>>() as _,
        events.clone().map(|e| e.sequence).collect::<Vec<_>>() as _,
        events.clone().map(|e| e.event_type.as_str()).collect::<Vec<_>>() as _,
        events.clone().map(|e| e.event_version.as_str()).collect::<Vec<_>>() as _,
        events.clone().map(|e| Json(&*e.payload)).collect::<Vec<_>>() as _,
        events.map(|e| Json(&*e.metadata)).collect::<Vec<_>>() as _,
        writes.iter().flat_map(|w| w.hashes.iter()).collect::<Vec<_>>() as _,
        log.clone().map(|r| r.command_id).collect::<Vec<_>>() as _,
        log.clone().map(|r| r.aggregate_type.as_str()).collect::<Vec<_>>() as _,
        log.clone().map(|r| r.aggregate_id.as_str()).collect::<Vec<_>>() as _,
        log.clone().map(|r| r.status).collect::<Vec<_>>() as _,
        log.clone().map(|r| Json(&*r.reply)).collect::<Vec<_>>() as _,
        log.clone().map(|r| r.key.actor.as_deref()).collect::<Vec<_>>() as _,
        log.map(|r| r.key.fingerprint.as_slice()).collect::<Vec<_>>() as _,
    )
    .execute(pool)
    .await?;
    Ok(())
}
