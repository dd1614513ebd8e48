//! Per-client request rates (per token subject, per client address) in bounded memory.
//!
//! A keyed GCRA limiter keeps one state per key it has seen, and nothing removes them by
//! itself: every address that ever sent a bad token would stay in memory for good. Here a key
//! is dropped once its bucket has refilled (its state is then no different from a fresh one,
//! so dropping it forgives nothing), checked every [`PRUNE_EVERY`], and the number of keys is
//! bounded: while `keys_max` clients are all inside their burst window, a client not among
//! them is answered "too many requests" (retry in a second) rather than tracked. Clients
//! already tracked keep their own rates, so a flood of new keys cannot throttle them, only
//! delay newcomers until the flood's keys refill and are dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::{Quota, RateLimiter};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts, Registry};

/// Clients tracked at once unless configured otherwise: ~100 bytes each.
pub const RATE_KEYS_MAX_DEFAULT: usize = 100_000;
/// How often keys whose bucket has refilled are dropped.
pub const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// While full, how often dropping is tried again for a newcomer (a full sweep is O(keys), so
/// not on every request of a flood).
const PRUNE_WHEN_FULL_EVERY: Duration = Duration::from_secs(1);

const NEVER: u64 = u64::MAX;

/// Why a request is not let through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Throttled {
    /// This client is over its rate.
    #[error("too many requests; retry in {} ms", retry_after.as_millis())]
    TooFast { retry_after: Duration },
    /// So many clients are active that a new one is not tracked (see the module docs).
    #[error("too many clients at once; retry in {} ms", retry_after.as_millis())]
    Crowded { retry_after: Duration },
    /// More requests at once than the burst allows, ever.
    #[error("more requests at once than the burst of {burst}")]
    TooMany { burst: u32 },
}

impl Throttled {
    pub fn retry_after(&self) -> Duration {
        match self {
            Throttled::TooFast { retry_after } | Throttled::Crowded { retry_after } => *retry_after,
            // Waiting does not help; a smaller batch does. Told as a second's wait.
            Throttled::TooMany { .. } => Duration::from_secs(1),
        }
    }
}

/// The keyed states, shared between the limiter (which updates them) and [`KeyedLimiter`]
/// (which asks whether a key is tracked; governor's limiter does not say).
#[derive(Debug, Clone, Default)]
struct SharedStore(Arc<DashMapStateStore<String>>);

impl StateStore for SharedStore {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<String> for SharedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&*self.0, drop_below);
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&*self.0);
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A rate per key, in bounded memory.
pub struct KeyedLimiter {
    limiter: RateLimiter<String, SharedStore, DefaultClock>,
    keys: SharedStore,
    keys_max: usize,
    started: Instant,
    /// Milliseconds after `started` of the last sweep, [`NEVER`] before the first (an atomic:
    /// read on every request).
    pruned_at_ms: AtomicU64,
}

impl std::fmt::Debug for KeyedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("keys", &self.len())
            .field("keys_max", &self.keys_max)
            .finish_non_exhaustive()
    }
}

impl KeyedLimiter {
    /// `per_second` on average per key, bursts of `burst`, at most `keys_max` keys (at least
    /// one); `None` when `per_second` is 0 (unlimited).
    pub fn new(per_second: u32, burst: u32, keys_max: usize) -> Option<Self> {
        let rate = std::num::NonZeroU32::new(per_second)?;
        let burst = std::num::NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
        let keys = SharedStore::default();
        Some(KeyedLimiter {
            limiter: RateLimiter::new(
                Quota::per_second(rate).allow_burst(burst),
                keys.clone(),
                DefaultClock::default(),
            ),
            keys,
            keys_max: keys_max.max(1),
            started: Instant::now(),
            pruned_at_ms: AtomicU64::new(NEVER),
        })
    }

    /// Counts one request of `key`, if it may go through now.
    pub fn check(&self, key: &String) -> Result<(), Throttled> {
        self.check_n(key, std::num::NonZeroU32::MIN)
    }

    /// Counts `n` requests of `key` at once (a batch of commands), if they may all go through
    /// now. More than the burst never can: `TooMany`.
    pub fn check_n(&self, key: &String, n: std::num::NonZeroU32) -> Result<(), Throttled> {
        self.prune_if_older_than(PRUNE_EVERY);
        if self.keys.0.len() >= self.keys_max && !self.keys.0.contains_key(key) {
            self.prune_if_older_than(PRUNE_WHEN_FULL_EVERY);
            if self.keys.0.len() >= self.keys_max {
                return Err(Throttled::Crowded {
                    retry_after: PRUNE_WHEN_FULL_EVERY,
                });
            }
        }
        match self.limiter.check_key_n(key, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let retry_after = not_until.wait_time_from(DefaultClock::default().now());
                Err(Throttled::TooFast { retry_after })
            }
            Err(governor::InsufficientCapacity(burst)) => Err(Throttled::TooMany { burst }),
        }
    }

    /// Drops the keys whose bucket has refilled, and the memory they held.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.keys.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.0.is_empty()
    }

    /// Sweeps if the last sweep is older than `interval`; one caller sweeps, the others go on.
    fn prune_if_older_than(&self, interval: Duration) {
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.pruned_at_ms.load(Ordering::Relaxed);
        let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        if (last == NEVER || now_ms.saturating_sub(last) >= interval_ms)
            && self
                .pruned_at_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.prune();
        }
    }
}

/// `tally_rate_limiter_keys{kind}`: the keys each limiter tracks, read at scrape time (so
/// counting costs requests nothing).
struct KeysGauge {
    gauge: IntGaugeVec,
    limiters: Vec<(&'static str, Arc<KeyedLimiter>)>,
}

impl Collector for KeysGauge {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        for (kind, limiter) in &self.limiters {
            self.gauge
                .with_label_values(&[*kind])
                .set(i64::try_from(limiter.len()).unwrap_or(i64::MAX));
        }
        self.gauge.collect()
    }
}

/// Registers `tally_rate_limiter_keys{kind}` for `limiters`, each under its kind.
pub fn register_keys_gauge(
    registry: &Registry,
    limiters: Vec<(&'static str, Arc<KeyedLimiter>)>,
) -> Result<(), prometheus::Error> {
    let gauge = IntGaugeVec::new(
        Opts::new(
            "tally_rate_limiter_keys",
            "Clients whose request rate is tracked, by kind (token, address, actor).",
        ),
        &["kind"],
    )?;
    registry.register(Box::new(KeysGauge { gauge, limiters }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> String {
        format!("k{i}")
    }

    #[test]
    fn refilled_keys_are_dropped_and_the_map_shrinks() {
        // 1000/s with a burst of 1: a key's bucket refills within a millisecond.
        let limiter = KeyedLimiter::new(1_000, 1, 10_000).unwrap_or_else(|| panic!("limited"));
        for i in 0..1_000 {
            assert_eq!(limiter.check(&key(i)), Ok(()));
        }
        assert_eq!(limiter.len(), 1_000);
        let capacity = limiter.keys.0.capacity();
        std::thread::sleep(Duration::from_millis(20));
        limiter.prune();
        assert_eq!(limiter.len(), 0);
        assert!(
            limiter.keys.0.capacity() < capacity,
            "memory not given back"
        );
    }

    #[test]
    fn beyond_the_bound_newcomers_wait_and_tracked_keys_go_on() {
        // 1/s with a burst of 2: a key stays tracked for two seconds.
        let limiter = KeyedLimiter::new(1, 2, 3).unwrap_or_else(|| panic!("limited"));
        for i in 0..3 {
            assert_eq!(limiter.check(&key(i)), Ok(()));
        }
        assert!(matches!(
            limiter.check(&key(3)),
            Err(Throttled::Crowded { .. })
        ));
        assert_eq!(limiter.len(), 3);
        // A tracked key keeps its own rate: one more within its burst, then too fast.
        assert_eq!(limiter.check(&key(0)), Ok(()));
        assert!(matches!(
            limiter.check(&key(0)),
            Err(Throttled::TooFast { .. })
        ));
    }

    #[test]
    fn a_full_limiter_takes_newcomers_once_idle_keys_refill() {
        let limiter = KeyedLimiter::new(1_000, 1, 2).unwrap_or_else(|| panic!("limited"));
        assert_eq!(limiter.check(&key(0)), Ok(()));
        assert_eq!(limiter.check(&key(1)), Ok(()));
        assert!(matches!(
            limiter.check(&key(2)),
            Err(Throttled::Crowded { .. })
        ));
        // The sweep for a newcomer runs at most once a second.
        std::thread::sleep(PRUNE_WHEN_FULL_EVERY + Duration::from_millis(20));
        assert_eq!(limiter.check(&key(2)), Ok(()));
        assert!(limiter.len() <= 2);
    }

    #[test]
    fn no_rate_is_no_limiter() {
        assert!(KeyedLimiter::new(0, 10, 10).is_none());
    }
}
