//! Publishes an audit digest (position, count, Merkle root over the chain heads; see
//! `audit::digest`) to `<prefix>.audit.digest` every interval, so history up to each digest is
//! anchored outside PostgreSQL: `tally audit verify --digest <seq>` proves it unchanged.
//!
//! Every instance may publish; a digest identical in count and root to the stream's last one is
//! skipped, so an idle ledger does not fill the stream.

use std::time::Duration;

use async_nats::jetstream;
use audit::digest::{Digest, DigestTracker};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub struct DigestPublisher {
    pub pool: PgPool,
    pub jetstream: jetstream::Context,
    pub subject: String,
    pub stream: String,
    pub interval: Duration,
    pub signing_key: Option<ed25519_dalek::SigningKey>,
}

impl DigestPublisher {
    pub async fn run(self, shutdown: CancellationToken) {
        if self.interval.is_zero() {
            return;
        }
        let mut tracker = DigestTracker::default();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
            match self.publish_once(&mut tracker).await {
                Ok(Some(digest)) => tracing::info!(
                    as_of_tx = digest.as_of_tx,
                    events = digest.event_count,
                    root = %digest.merkle_root,
                    "audit digest published"
                ),
                Ok(None) => tracing::debug!("no new events since the last audit digest"),
                Err(error) => {
                    tracing::warn!(%error, "audit digest not published; next interval retries")
                }
            }
        }
    }

    /// Takes a digest and publishes it unless it equals the last one. Returns what it published.
    pub async fn publish_once(
        &self,
        tracker: &mut DigestTracker,
    ) -> Result<Option<Digest>, String> {
        let mut digest = tracker
            .take(&self.pool)
            .await
            .map_err(|e| format!("taking the digest failed: {e}"))?;
        if let Ok(stream) = self.jetstream.get_stream(&self.stream).await
            && let Ok(last) = stream.get_last_raw_message_by_subject(&self.subject).await
            && let Ok(previous) = serde_json::from_slice::<Digest>(&last.payload)
            && previous.event_count == digest.event_count
            && previous.merkle_root == digest.merkle_root
        {
            return Ok(None);
        }
        if let Some(key) = &self.signing_key {
            audit::digest_signing::sign(&mut digest, key);
        }
        let body = serde_json::to_vec(&digest).map_err(|e| e.to_string())?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("digest:{}:{}", digest.as_of_tx, digest.merkle_root).as_str(),
        );
        self.jetstream
            .publish_with_headers(self.subject.clone(), headers, body.into())
            .await
            .map_err(|e| format!("publish failed: {e}"))?
            .await
            .map_err(|e| format!("no ack from the audit stream: {e}"))?;
        Ok(Some(digest))
    }
}
