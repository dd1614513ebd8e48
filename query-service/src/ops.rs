//! `/v1/ops/...`: what the operations console shows (projection positions and lag, parked
//! aggregates and their dead letters, the latest audit digest, one aggregate's chain check).
//!
//! Behind authentication with scope `audit:read`, never for a token bound to an owner (both
//! enforced by `access`); retry and drop of a parked aggregate also need `admin`, checked here.
//! What needs NATS (lag, the digest) reads it through an [`OpsContext`] request extension; without
//! one those parts answer without lag, or 503.

pub(crate) mod dead_letters;
pub(crate) mod digest;
mod error;
pub(crate) mod projections;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::routing::{get, post};
use platform::infra::Infra;
use sqlx::PgPool;

pub use error::OpsError;

/// What the ops endpoints need besides PostgreSQL; added as an `axum::Extension<Arc<OpsContext>>`.
#[derive(Debug)]
pub struct OpsContext {
    pub jetstream: async_nats::jetstream::Context,
    /// `<PREFIX>_EVENTS`.
    pub events_stream: String,
    /// `<PREFIX>_AUDIT`.
    pub audit_stream: String,
    /// `<prefix>.audit.digest`.
    pub digest_subject: String,
    /// The ed25519 public key (hex) digests must be signed with, when one is configured.
    pub digest_public_key: Option<String>,
    throughput: Throughput,
}

/// The last applied-events count per projection and when it was read.
#[derive(Debug, Default)]
struct Throughput {
    samples: Mutex<HashMap<String, Sample>>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    applied: i64,
    per_s: Option<f64>,
}

impl OpsContext {
    /// What the router hands the `/v1/ops` handlers (as an extension).
    pub fn new(infra: &Infra, digest_public_key: Option<String>) -> Arc<Self> {
        Arc::new(OpsContext {
            jetstream: infra.jetstream.clone(),
            events_stream: infra.streams.events.clone(),
            audit_stream: infra.streams.audit.clone(),
            digest_subject: infra.subjects.audit_digest(),
            digest_public_key,
            throughput: Throughput::default(),
        })
    }

    fn throughput(&self, projection: &str, applied: i64) -> Option<f64> {
        self.throughput.rate(projection, applied)
    }
}

impl Throughput {
    /// Events per second applied by `projection` since the previous sample at least a second
    /// old; the last rate while samples come faster (several consoles polling at once).
    fn rate(&self, projection: &str, applied: i64) -> Option<f64> {
        let now = Instant::now();
        let mut samples = self.samples.lock().ok()?;
        let fresh = Sample {
            at: now,
            applied,
            per_s: None,
        };
        let Some(previous) = samples.get(projection).copied() else {
            samples.insert(projection.to_owned(), fresh);
            return None;
        };
        let elapsed = now.duration_since(previous.at).as_secs_f64();
        if elapsed < 1.0 {
            return previous.per_s;
        }
        // A rebuild swaps the counts back down: no negative rates.
        let per_s = Some((applied - previous.applied).max(0) as f64 / elapsed);
        samples.insert(projection.to_owned(), Sample { per_s, ..fresh });
        per_s
    }
}

/// The routes, mounted behind authentication with the rest of `/v1`.
pub fn routes() -> Router<PgPool> {
    Router::new()
        .route("/v1/ops/projections", get(projections::status))
        .route("/v1/ops/dead-letters", get(dead_letters::list))
        .route(
            "/v1/ops/dead-letters/{projection}/{aggregate_id}/retry",
            post(dead_letters::retry),
        )
        .route(
            "/v1/ops/dead-letters/{projection}/{aggregate_id}/drop",
            post(dead_letters::drop),
        )
        .route("/v1/ops/digest", get(digest::latest))
        .route(
            "/v1/ops/verify/{aggregate_type}/{aggregate_id}",
            get(digest::verify),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moves the last sample of `projection` two seconds into the past.
    fn age(throughput: &Throughput, projection: &str) {
        if let Ok(mut samples) = throughput.samples.lock()
            && let Some(sample) = samples.get_mut(projection)
        {
            sample.at -= std::time::Duration::from_secs(2);
        }
    }

    #[test]
    fn throughput_is_applied_events_over_time_and_never_negative() {
        let throughput = Throughput::default();
        assert_eq!(throughput.rate("accounts", 100), None, "first sample");
        // Within a second of the last sample: the last rate (none yet), the sample kept.
        assert_eq!(throughput.rate("accounts", 150), None);
        age(&throughput, "accounts");
        let rate = throughput.rate("accounts", 300).unwrap_or_default();
        assert!((rate - 100.0).abs() < 5.0, "{rate}");
        assert_eq!(
            throughput.rate("accounts", 400),
            Some(rate),
            "too soon: the last rate"
        );
        assert_eq!(throughput.rate("holds", 7), None, "per projection");
        age(&throughput, "accounts");
        // A rebuild starts the counts again.
        assert_eq!(throughput.rate("accounts", 10), Some(0.0));
    }
}
