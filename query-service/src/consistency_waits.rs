//! Reads waiting for a consistency token, checked together: one watcher task asks PostgreSQL
//! where the read models are for every waiting token in one statement per tick, and wakes the
//! reads whose write has been applied. Each read polling on its own would multiply the load by
//! the number of waiting reads exactly when the projections are behind (a feedback loop: the
//! slower the projection, the more reads wait, the slower PostgreSQL gets).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::consistency::{Target, Token};

/// How often the read models are checked while any read waits.
const TICK: Duration = Duration::from_millis(5);
/// Reads waiting at most; beyond it a read is answered `not_yet_consistent` at once.
pub const WAITING_MAX: usize = 10_000;
/// Reads of one reader (token subject) waiting at most, so one reader cannot fill the rest.
pub const WAITING_PER_READER_MAX: usize = 64;
/// Pause after a failed check (the waiting reads time out by themselves meanwhile).
const FAILURE_PAUSE: Duration = Duration::from_millis(200);

struct Waiter {
    token: Token,
    reached: oneshot::Sender<()>,
}

/// Too many reads are waiting already.
#[derive(Debug)]
pub struct Full;

#[derive(Default)]
pub struct ConsistencyWaits {
    waiting: Mutex<Vec<Waiter>>,
    arrived: Notify,
    /// Waits held per reader; a reader with none has no entry, so this stays as small as the
    /// number of readers waiting right now.
    per_reader: Mutex<HashMap<String, usize>>,
}

/// A reader's place among the waits, given back when dropped.
#[derive(Debug)]
pub struct ReaderPlace<'a> {
    waits: &'a ConsistencyWaits,
    reader: String,
}

impl Drop for ReaderPlace<'_> {
    fn drop(&mut self) {
        let mut per_reader = self
            .waits
            .per_reader
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(held) = per_reader.get_mut(&self.reader) {
            *held -= 1;
            if *held == 0 {
                per_reader.remove(&self.reader);
            }
        }
    }
}

impl std::fmt::Debug for ConsistencyWaits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsistencyWaits").finish_non_exhaustive()
    }
}

impl ConsistencyWaits {
    /// A place for one more wait of `reader`, unless it holds `WAITING_PER_READER_MAX`.
    pub fn hold(&self, reader: &str) -> Result<ReaderPlace<'_>, Full> {
        let mut per_reader = self.per_reader.lock().unwrap_or_else(|p| p.into_inner());
        let held = per_reader.entry(reader.to_owned()).or_default();
        if *held >= WAITING_PER_READER_MAX {
            return Err(Full);
        }
        *held += 1;
        Ok(ReaderPlace {
            waits: self,
            reader: reader.to_owned(),
        })
    }

    /// Resolves once the watcher sees the read model at `token` (dropping it withdraws the wait).
    pub fn register(&self, token: Token) -> Result<oneshot::Receiver<()>, Full> {
        let (reached, receiver) = oneshot::channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.len() >= WAITING_MAX {
            return Err(Full);
        }
        waiting.push(Waiter { token, reached });
        drop(waiting);
        self.arrived.notify_one();
        Ok(receiver)
    }

    /// The watcher: until `shutdown`, checks every waiting token each tick while any wait.
    pub async fn watch(&self, pool: PgPool, shutdown: CancellationToken) {
        loop {
            let tokens = {
                let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
                // Reads that gave up (timeout, client gone) are withdrawn here.
                waiting.retain(|w| !w.reached.is_closed());
                waiting.iter().map(|w| w.token.clone()).collect::<Vec<_>>()
            };
            if tokens.is_empty() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = self.arrived.notified() => continue,
                }
            }
            match reached(&pool, &tokens).await {
                Ok(reached) => {
                    let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
                    let (done, still): (Vec<_>, Vec<_>) = std::mem::take(&mut *waiting)
                        .into_iter()
                        .partition(|w| reached.contains(&w.token));
                    *waiting = still;
                    drop(waiting);
                    for waiter in done {
                        let _ = waiter.reached.send(());
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "consistency check failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(FAILURE_PAUSE) => {}
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }
}

/// The projection that serves an aggregate type's read model.
pub fn projection_of(aggregate_type: &str) -> &'static str {
    match aggregate_type {
        "transfer" => "transfers",
        "transaction" => "transactions",
        "hold" => "holds",
        _ => "accounts",
    }
}

/// Which of `tokens` the read models have reached: two statements, however many tokens.
pub async fn reached(pool: &PgPool, tokens: &[Token]) -> Result<HashSet<Token>, sqlx::Error> {
    let mut projections = Vec::new();
    let mut types = Vec::new();
    let mut ids = Vec::new();
    let mut transfers = Vec::new();
    for token in tokens {
        match token.target {
            Target::Version(_) => {
                projections.push(projection_of(&token.aggregate_type));
                types.push(token.aggregate_type.as_str());
                ids.push(token.aggregate_id.as_str());
            }
            Target::Settled => {
                if let Ok(id) = Uuid::parse_str(&token.aggregate_id) {
                    transfers.push(id);
                }
            }
        }
    }
    let mut versions: std::collections::HashMap<(String, String), i64> = Default::default();
    if !ids.is_empty() {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT v.aggregate_type, v.aggregate_id, v.version
             FROM unnest($1::text[], $2::text[], $3::text[]) AS w(projection, aggregate_type, aggregate_id)
             JOIN projection_versions v USING (projection, aggregate_type, aggregate_id)",
        )
        .bind(&projections)
        .bind(&types)
        .bind(&ids)
        .fetch_all(pool)
        .await?;
        versions.extend(rows.into_iter().map(|(t, id, v)| ((t, id), v)));
    }
    let mut settled = HashSet::new();
    if !transfers.is_empty() {
        let rows: Vec<Uuid> = sqlx::query_scalar(
            "SELECT transfer_id FROM transfers
             WHERE transfer_id = ANY($1) AND status IN ('completed', 'failed')",
        )
        .bind(&transfers)
        .fetch_all(pool)
        .await?;
        settled.extend(rows);
    }
    Ok(tokens
        .iter()
        .filter(|token| match token.target {
            Target::Version(version) => versions
                .get(&(token.aggregate_type.clone(), token.aggregate_id.clone()))
                .is_some_and(|applied| *applied >= version),
            Target::Settled => {
                Uuid::parse_str(&token.aggregate_id).is_ok_and(|id| settled.contains(&id))
            }
        })
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reader_holds_a_bounded_share_of_the_waits() {
        let waits = ConsistencyWaits::default();
        let mallory: Vec<_> = (0..WAITING_PER_READER_MAX)
            .map(|_| waits.hold("mallory"))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|_| panic!("a place below the limit was refused"));
        assert!(waits.hold("mallory").is_err(), "a place beyond the limit");
        assert!(waits.hold("alice").is_ok(), "another reader crowded out");
        drop(mallory);
        assert!(waits.hold("mallory").is_ok(), "places not given back");
        assert!(
            waits
                .per_reader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty(),
            "readers without a wait still take room"
        );
    }
}
