//! Who applies which partition: membership and ownership through PostgreSQL session advisory
//! locks (docs/design/partitioned-projections.md).
//!
//! Each worker holds a member lock `(MEMBER_SPACE, its id)` on a connection of its own, and a
//! partition lock `(PARTITION_SPACE, k)` for each partition it applies. Every `TICK` it lists
//! the members (the granted member locks, in id order) and wants partition k when it is the
//! (k mod n)-th: a joining worker takes its share as the others let theirs go, and a worker
//! that dies (its connection closes, so PostgreSQL drops its locks at once) is replaced within
//! a tick. A partition is let go only after its runners stopped pulling and unpinned, so the
//! next owner finds it free of the last one; the partition's apply lock and the versions'
//! compare-and-set keep the effects right even if two ever overlapped.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Projection;
use crate::runner::Runner;

/// The two-key advisory lock spaces (`pg_advisory_lock(int4, int4)`, shown in `pg_locks` with
/// `objsubid = 2`): apart from every one-key lock Tally takes (`hashtextextended` keys).
pub const MEMBER_SPACE: i32 = 0x7a11_0001;
pub const PARTITION_SPACE: i32 = 0x7a11_0002;
/// How often membership is read and ownership adjusted: the takeover time after a worker dies.
const TICK: Duration = Duration::from_millis(500);
/// Every statement on the membership connection; longer means PostgreSQL is unreachable, and
/// the worker lets go of everything (the locks are gone with the session anyway).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the events stream's partition count is read again (it changes only when an
/// operator changes `--event-partitions` and the command-service restarts).
const PARTITIONS_EVERY_TICKS: u32 = 10;
/// A runner that stops on its own (could not create its consumer) is started again after this.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Makes the runner of one (projection, partition).
pub trait RunnerFactory: Send + Sync + std::fmt::Debug {
    /// `partitions`: the events stream's partition count, `None` for a stream without
    /// partitions (then one runner, on all of the projection's subjects).
    fn runner(&self, projection: Projection, partition: u32, partitions: Option<u32>) -> Runner;
}

/// The partitions each live member's connection holds: (partition, PostgreSQL backend pid).
pub async fn owners(pool: &PgPool) -> Result<Vec<(u32, i32)>, sqlx::Error> {
    let rows: Vec<(i64, i32)> = sqlx::query_as(
        "SELECT objid::bigint, pid FROM pg_locks
         WHERE locktype = 'advisory' AND objsubid = 2 AND granted AND classid = $1::bigint::oid
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
         ORDER BY objid",
    )
    .bind(i64::from(PARTITION_SPACE))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(k, pid)| (u32::try_from(k).unwrap_or(u32::MAX), pid))
        .collect())
}

/// The live members' ids, in order.
async fn members(conn: &mut PgConnection) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT objid::bigint FROM pg_locks
         WHERE locktype = 'advisory' AND objsubid = 2 AND granted AND classid = $1::bigint::oid
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
         ORDER BY objid",
    )
    .bind(i64::from(MEMBER_SPACE))
    .fetch_all(conn)
    .await
}

/// The partitions `me` should own among `members` (sorted): k goes to the (k mod n)-th.
pub fn share(members: &[i64], me: i64, partitions: u32) -> BTreeSet<u32> {
    let Some(n) = u32::try_from(members.len()).ok().filter(|n| *n > 0) else {
        return BTreeSet::new();
    };
    (0..partitions)
        .filter(|k| members[(k % n) as usize] == me)
        .collect()
}

/// The running runners of one owned partition.
struct Owned {
    stop: CancellationToken,
    tasks: Vec<(Projection, JoinHandle<Result<(), String>>)>,
}

#[derive(Debug)]
pub struct Supervisor<F> {
    pub pool: PgPool,
    pub jetstream: async_nats::jetstream::Context,
    pub stream: String,
    pub factory: F,
}

impl<F: RunnerFactory> Supervisor<F> {
    /// Runs until `shutdown`; then stops every runner and lets go of every partition.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut conn: Option<PgConnection> = None;
        let mut owned: BTreeMap<u32, Owned> = BTreeMap::new();
        let mut partitions = self.read_partitions().await.unwrap_or(None);
        let mut ticks = 0u32;
        let mut me = member_id();
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = interval.tick() => {}
            }
            ticks = ticks.wrapping_add(1);
            if ticks.is_multiple_of(PARTITIONS_EVERY_TICKS)
                && let Some(now) = self.read_partitions().await
                && now != partitions
            {
                tracing::warn!(
                    from = partitions.unwrap_or(1),
                    to = now.unwrap_or(1),
                    "the events stream's partition count changed; re-dividing"
                );
                partitions = now;
                // Every runner knows the count (the dead-letter release locks them all).
                release_all(&mut owned, conn.as_mut()).await;
            }
            if conn.is_none() {
                match self.join(&mut me).await {
                    Ok(joined) => conn = Some(joined),
                    Err(error) => {
                        tracing::warn!(%error, "cannot join the projection workers; retrying");
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            if let Err(error) = self.adjust(c, me, partitions, &mut owned).await {
                // The session (and with it every lock) may be gone: stop applying anything
                // before another worker takes over, and join again.
                tracing::warn!(%error, "membership connection failed; letting go of every partition");
                release_all(&mut owned, None).await;
                conn = None;
            }
        }
        release_all(&mut owned, conn.as_mut()).await;
        if let Some(c) = conn {
            let _ = c.close().await;
        }
    }

    /// The events stream's partition count (`Some(None)`: a stream without partitions);
    /// `None` when the stream cannot be read now.
    async fn read_partitions(&self) -> Option<Option<u32>> {
        let mut stream = self.jetstream.get_stream(&self.stream).await.ok()?;
        let info = stream.info().await.ok()?;
        Some(platform::nats::event_partitions_of(&info.config))
    }

    /// A connection of this worker's own holding its member lock.
    async fn join(&self, me: &mut i64) -> Result<PgConnection, sqlx::Error> {
        let mut conn = tokio::time::timeout(STATEMENT_TIMEOUT, self.pool.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??
            .detach();
        for _ in 0..10 {
            let taken: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2::bigint::int4)")
                    .bind(MEMBER_SPACE)
                    .bind(*me)
                    .fetch_one(&mut conn)
                    .await?;
            if taken {
                tracing::info!(member = *me, "joined the projection workers");
                return Ok(conn);
            }
            // Another worker drew the same id.
            *me = member_id();
        }
        Err(sqlx::Error::Protocol("no free member id".to_owned()))
    }

    /// One tick: let go of what is no longer this worker's share, take what is and is free,
    /// restart runners that stopped on their own.
    async fn adjust(
        &self,
        conn: &mut PgConnection,
        me: i64,
        partitions: Option<u32>,
        owned: &mut BTreeMap<u32, Owned>,
    ) -> Result<(), sqlx::Error> {
        let members = timed(members(conn)).await?;
        let wanted = share(&members, me, partitions.unwrap_or(1).max(1));
        let surplus: Vec<u32> = owned
            .keys()
            .copied()
            .filter(|k| !wanted.contains(k))
            .collect();
        for k in surplus {
            if let Some(partition) = owned.remove(&k) {
                stop(partition).await;
            }
            timed(
                sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                    .bind(PARTITION_SPACE)
                    .bind(i32::try_from(k).unwrap_or(i32::MAX))
                    .execute(&mut *conn),
            )
            .await?;
        }
        for &k in &wanted {
            if let Some(partition) = owned.get_mut(&k) {
                for (projection, task) in &mut partition.tasks {
                    if task.is_finished() {
                        match (&mut *task).await {
                            Ok(Err(error)) => {
                                tracing::warn!(%error, projection = projection.name(), partition = k, "projection runner stopped; restarting");
                                tokio::time::sleep(RESTART_DELAY).await;
                            }
                            Err(error) => {
                                tracing::error!(%error, projection = projection.name(), partition = k, "projection runner panicked; restarting");
                            }
                            Ok(Ok(())) => {}
                        }
                        let runner = self.factory.runner(*projection, k, partitions);
                        *task = tokio::spawn(runner.run(partition.stop.clone()));
                    }
                }
                continue;
            }
            let taken: bool = timed(
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                    .bind(PARTITION_SPACE)
                    .bind(i32::try_from(k).unwrap_or(i32::MAX))
                    .fetch_one(&mut *conn),
            )
            .await?;
            if !taken {
                continue; // its last owner has not let go yet
            }
            let stop = CancellationToken::new();
            let tasks = Projection::ALL
                .into_iter()
                .map(|projection| {
                    let runner = self.factory.runner(projection, k, partitions);
                    (projection, tokio::spawn(runner.run(stop.clone())))
                })
                .collect();
            owned.insert(k, Owned { stop, tasks });
        }
        Ok(())
    }
}

/// A random member id, positive and below 2^31: an `oid` in pg_locks reads back as the same
/// number, and an `int4` key takes it.
fn member_id() -> i64 {
    let bits = uuid::Uuid::new_v4().as_u128();
    i64::from((bits as u32) >> 1).max(1)
}

async fn timed<T>(
    query: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(STATEMENT_TIMEOUT, query)
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
}

/// Stops a partition's runners (each finishes its batch, stops pulling and unpins).
async fn stop(partition: Owned) {
    partition.stop.cancel();
    for (projection, task) in partition.tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, projection = projection.name(), "projection runner failed")
            }
            Err(error) => {
                tracing::error!(%error, projection = projection.name(), "projection runner panicked")
            }
        }
    }
}

/// Stops every runner; then, on a live connection, lets go of the partitions' locks.
async fn release_all(owned: &mut BTreeMap<u32, Owned>, conn: Option<&mut PgConnection>) {
    let ks: Vec<u32> = owned.keys().copied().collect();
    for k in &ks {
        if let Some(partition) = owned.remove(k) {
            stop(partition).await;
        }
    }
    if let Some(conn) = conn {
        for k in ks {
            let _ = timed(
                sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                    .bind(PARTITION_SPACE)
                    .bind(i32::try_from(k).unwrap_or(i32::MAX))
                    .execute(&mut *conn),
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_cover_every_partition_once() {
        let members = [3, 7, 9];
        let all: Vec<u32> = members
            .iter()
            .flat_map(|m| share(&members, *m, 4))
            .collect();
        let mut sorted = all.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2, 3]);
        assert_eq!(share(&members, 3, 4).len(), 2);
        assert!(share(&[], 3, 4).is_empty());
    }
}
