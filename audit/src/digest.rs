//! Audit digests: a point in history (every event of a transaction below `as_of_tx`), how
//! many events it holds, and a Merkle root over every aggregate's chain head at that point.
//!
//! `as_of_tx` is the snapshot's xmin: no transaction below it is still running, so the set of
//! events it names can never grow, and per aggregate it is a prefix of the chain (a later event
//! is always written by a transaction that started after the earlier one committed).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use domain::hash_chain::{self, ChainHash};
use event_store::audit as store;
use event_store::{Horizon, StoreError};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::Finding;
use crate::verify::VerifyReport;

pub const DIGEST_FORMAT: &str = "tally-digest-v1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub format: String,
    /// Covers the events of every transaction with id below this.
    pub as_of_tx: u64,
    /// The highest `global_position` covered.
    pub position: i64,
    pub event_count: i64,
    pub aggregate_count: i64,
    /// Hex SHA-256 Merkle root over the chain heads (docs/design/audit-digests.md).
    pub merkle_root: String,
    pub taken_at: DateTime<Utc>,
    /// Present when the publisher has a signing key (`TALLY_AUDIT_SIGNING_KEY_FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::digest_signing::DigestSignature>,
}

/// The Merkle root over heads, sorted here by (type, id) bytes whatever order they came in.
pub fn root_of(heads: &[(String, String, u64, ChainHash)]) -> ChainHash {
    let mut sorted: Vec<&(String, String, u64, ChainHash)> = heads.iter().collect();
    sorted.sort_unstable_by(|a, b| {
        (a.0.as_bytes(), a.1.as_bytes()).cmp(&(b.0.as_bytes(), b.1.as_bytes()))
    });
    hash_chain::merkle_root(
        sorted
            .into_iter()
            .map(|(t, id, seq, head)| hash_chain::merkle_leaf(t, id, *seq, head))
            .collect(),
    )
}

/// Takes a digest of everything committed so far, from one consistent snapshot.
pub async fn take(pool: &PgPool) -> Result<Digest, StoreError> {
    DigestTracker::default().take(pool).await
}

/// Chain heads kept between digests, so that each digest after the first reads only the
/// events committed since the one before: the set of events below an `as_of_tx` never
/// changes, so the events from the last `as_of_tx` up to the new one are exactly what is new.
/// A full read per digest grew with the store (3.4 s of PostgreSQL CPU per minute at 2.9 M
/// events, a core taken from the command path). Memory: one entry per aggregate (about
/// 100 bytes).
#[derive(Debug, Default)]
pub struct DigestTracker {
    /// Ordered by (type, id) bytes, the Merkle tree's leaf order.
    heads: BTreeMap<(String, String), (u64, ChainHash)>,
    event_count: i64,
    position: i64,
    /// The last digest's `as_of_tx`; none before the first.
    as_of: Option<Horizon>,
    /// A head without a hash was seen (a row from before the hash chain, which a starting
    /// instance may hash later): the next digest reads every head again.
    unhashed: bool,
}

fn chain_hash(hash: Option<&[u8]>) -> ChainHash {
    hash.and_then(|h| ChainHash::try_from(h).ok())
        .unwrap_or(hash_chain::GENESIS)
}

impl DigestTracker {
    /// A digest of everything committed so far; the first reads every head, the next ones
    /// only what committed since.
    pub async fn take(&mut self, pool: &PgPool) -> Result<Digest, StoreError> {
        let mut tx = store::begin_snapshot(pool).await?;
        let (horizon, taken_at) = store::snapshot_point(&mut tx).await?;
        let as_of_tx = u64::try_from(horizon.0)
            .map_err(|_| StoreError::corrupt(format!("a snapshot horizon of {horizon}")))?;
        match self.as_of.filter(|_| !self.unhashed) {
            Some(previous) => {
                // Streamed and folded to one head per aggregate as it arrives: a minute of a
                // busy ledger is hundreds of thousands of rows, never held at once. Merged only
                // after the whole read, so a failed read leaves the tracker as it was.
                let mut touched: BTreeMap<(String, String), (u64, hash_chain::ChainHash)> =
                    BTreeMap::new();
                let (mut count, mut position, mut unhashed) = (0i64, self.position, false);
                {
                    let mut rows = store::links_between(&mut tx, previous, horizon);
                    while let Some(event) = rows.try_next().await? {
                        count = count.saturating_add(1);
                        position = position.max(event.global_position);
                        unhashed |= event.hash.is_none();
                        let head = (
                            u64::try_from(event.sequence).unwrap_or(0),
                            chain_hash(event.hash.as_deref()),
                        );
                        touched
                            .entry((event.aggregate_type, event.aggregate_id))
                            .and_modify(|h| {
                                if head.0 > h.0 {
                                    *h = head;
                                }
                            })
                            .or_insert(head);
                    }
                }
                tx.commit().await?;
                self.event_count = self.event_count.saturating_add(count);
                self.position = position;
                self.unhashed |= unhashed;
                for (key, head) in touched {
                    self.heads
                        .entry(key)
                        .and_modify(|h| {
                            if head.0 > h.0 {
                                *h = head;
                            }
                        })
                        .or_insert(head);
                }
            }
            None => {
                // Reads every event once: on a large store longer than the pool's statement
                // timeout (every attempt then failed, and was retried each minute at the cost
                // of seconds of CPU on all cores). One worker and no timeout: it finishes, once,
                // without taking the machine from the command path.
                store::allow_full_scans(&mut tx).await?;
                let (event_count, position) = store::totals_below(&mut tx, horizon).await?;
                let mut heads = BTreeMap::new();
                let mut unhashed = false;
                {
                    let mut rows = store::heads_below(&mut tx, horizon);
                    while let Some(head) = rows.try_next().await? {
                        unhashed |= head.hash.is_none();
                        heads.insert(
                            (head.aggregate_type, head.aggregate_id),
                            (
                                u64::try_from(head.sequence).unwrap_or(0),
                                chain_hash(head.hash.as_deref()),
                            ),
                        );
                    }
                }
                tx.commit().await?;
                *self = DigestTracker {
                    heads,
                    event_count,
                    position,
                    as_of: None,
                    unhashed,
                };
            }
        }
        self.as_of = Some(horizon);
        let root = hash_chain::merkle_root(
            self.heads
                .iter()
                .map(|((t, id), (seq, head))| hash_chain::merkle_leaf(t, id, *seq, head))
                .collect(),
        );
        Ok(Digest {
            format: DIGEST_FORMAT.to_owned(),
            as_of_tx,
            position: self.position,
            event_count: self.event_count,
            aggregate_count: i64::try_from(self.heads.len()).unwrap_or(i64::MAX),
            merkle_root: hex::encode(root),
            taken_at,
            signature: None,
        })
    }
}

/// What a verify run restricted to `digest.as_of_tx` found that contradicts the digest, and
/// whether its signature holds (made with `pinned_key`, when given).
pub fn compare(digest: &Digest, report: &VerifyReport, pinned_key: Option<&str>) -> Vec<Finding> {
    let mut found = Vec::new();
    if let Err(reason) = crate::digest_signing::check(digest, pinned_key) {
        found.push(Finding::DigestSignature { reason });
    }
    let root = hex::encode(report.merkle_root());
    if root != digest.merkle_root {
        found.push(Finding::DigestMismatch {
            field: "merkle_root".into(),
            digest: digest.merkle_root.clone(),
            store: root,
        });
    }
    let count = i64::try_from(report.events).unwrap_or(i64::MAX);
    if count != digest.event_count {
        found.push(Finding::DigestMismatch {
            field: "event_count".into(),
            digest: digest.event_count.to_string(),
            store: count.to_string(),
        });
    }
    found
}
