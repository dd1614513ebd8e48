//! Who is following what, and waking them: one `LISTEN` session per query-service instance hears
//! every batch the accounts projection commits (`projections::accounts::CHANNEL`) and wakes the
//! feeds of the accounts and owners it names. A wake is a flag, not a message: however many
//! batches arrive while a feed is busy, it reads once, from its own cursor, so a feed never
//! falls behind on notifications and the hub never waits for one. Whenever the listening
//! session was lost (notifications may have gone by unheard), every feed is woken.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use projections::accounts::{Announcement, CHANNEL};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Pause before listening again after a failure.
const RELISTEN_PAUSE: Duration = Duration::from_millis(500);

/// What a feed follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Account(String),
    Owner(String),
}

/// Why a feed was not opened.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// This token's subject has its share of feeds open.
    PerToken(usize),
    /// This instance has its share of feeds open.
    Total(usize),
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    waiting: HashMap<Key, HashMap<u64, Arc<Notify>>>,
    per_token: HashMap<String, usize>,
    total: usize,
}

pub struct Hub {
    registry: Mutex<Registry>,
    per_token_max: usize,
    total_max: usize,
    open: prometheus::IntGauge,
    /// Notifications heard (for tests and the operations page).
    heard: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("per_token_max", &self.per_token_max)
            .field("total_max", &self.total_max)
            .finish_non_exhaustive()
    }
}

/// A feed's place: woken by `wake`, given back when dropped.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    key: Key,
    subject: String,
    id: u64,
    pub wake: Arc<Notify>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut registry = self.hub.lock();
        if let Some(waiting) = registry.waiting.get_mut(&self.key) {
            waiting.remove(&self.id);
            if waiting.is_empty() {
                registry.waiting.remove(&self.key);
            }
        }
        if let Some(held) = registry.per_token.get_mut(&self.subject) {
            *held -= 1;
            if *held == 0 {
                registry.per_token.remove(&self.subject);
            }
        }
        registry.total -= 1;
        self.hub
            .open
            .set(i64::try_from(registry.total).unwrap_or(i64::MAX));
    }
}

impl Hub {
    pub fn new(
        per_token_max: usize,
        total_max: usize,
        registry: &prometheus::Registry,
    ) -> Result<Hub, prometheus::Error> {
        let open = prometheus::IntGauge::new("tally_feeds_open", "Change feeds open")?;
        registry.register(Box::new(open.clone()))?;
        Ok(Hub {
            registry: Mutex::default(),
            per_token_max,
            total_max,
            open,
            heard: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a feed of `subject` following `key`, unless either limit is reached (an
    /// operator's token, `per_token: false`, is held to the instance's limit only: it follows
    /// for everyone, as it is not rate limited either).
    pub fn subscribe(
        self: &Arc<Self>,
        key: Key,
        subject: &str,
        per_token: bool,
    ) -> Result<Subscription, Refused> {
        let mut registry = self.lock();
        if registry.total >= self.total_max {
            return Err(Refused::Total(self.total_max));
        }
        let held = registry.per_token.get(subject).copied().unwrap_or(0);
        if per_token && held >= self.per_token_max {
            return Err(Refused::PerToken(self.per_token_max));
        }
        registry.per_token.insert(subject.to_owned(), held + 1);
        registry.total += 1;
        registry.next_id += 1;
        let id = registry.next_id;
        let wake = Arc::new(Notify::new());
        registry
            .waiting
            .entry(key.clone())
            .or_default()
            .insert(id, Arc::clone(&wake));
        self.open
            .set(i64::try_from(registry.total).unwrap_or(i64::MAX));
        Ok(Subscription {
            hub: Arc::clone(self),
            key,
            subject: subject.to_owned(),
            id,
            wake,
        })
    }

    fn wake(&self, key: &Key, registry: &Registry) {
        for wake in registry
            .waiting
            .get(key)
            .into_iter()
            .flat_map(|w| w.values())
        {
            wake.notify_one();
        }
    }

    fn wake_all(&self) {
        let registry = self.lock();
        for wake in registry.waiting.values().flat_map(|w| w.values()) {
            wake.notify_one();
        }
    }

    /// Wakes the feeds of what `payload` names (all of them if it cannot be read).
    pub fn dispatch(&self, payload: &str) {
        self.heard.fetch_add(1, Ordering::Relaxed);
        let Ok(announcement) = serde_json::from_str::<Announcement>(payload) else {
            tracing::warn!(
                payload,
                "unreadable account change notification; waking every feed"
            );
            self.wake_all();
            return;
        };
        let registry = self.lock();
        if registry.waiting.is_empty() {
            return;
        }
        for changed in announcement.changed {
            self.wake(&Key::Account(changed.account_id), &registry);
            self.wake(&Key::Owner(changed.owner), &registry);
        }
    }

    /// Until `shutdown`: listens for the accounts projection's commits and wakes their feeds.
    pub async fn listen(self: Arc<Self>, pool: PgPool, shutdown: CancellationToken) {
        loop {
            let listening = tokio::select! {
                () = shutdown.cancelled() => return,
                listening = self.listen_once(&pool) => listening,
            };
            if let Err(error) = listening {
                tracing::warn!(%error, "change feed listener lost; listening again");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RELISTEN_PAUSE) => {}
            }
        }
    }

    async fn listen_once(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        // Whatever was committed while no one listened is read by the feeds now.
        self.wake_all();
        loop {
            match listener.try_recv().await? {
                Some(notification) => self.dispatch(notification.payload()),
                // The session was lost and is back (sqlx listens again at once).
                None => self.wake_all(),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)] // tests: a failed expectation should panic
mod tests {
    use super::*;

    fn hub(per_token: usize, total: usize) -> Arc<Hub> {
        Arc::new(Hub::new(per_token, total, &prometheus::Registry::new()).expect("hub"))
    }

    #[test]
    fn places_are_limited_per_token_and_in_total_and_given_back() {
        let hub = hub(2, 3);
        let key = || Key::Account("a".into());
        let first = hub.subscribe(key(), "alice", true).expect("first");
        let _second = hub.subscribe(key(), "alice", true).expect("second");
        assert_eq!(
            hub.subscribe(key(), "alice", true).err(),
            Some(Refused::PerToken(2))
        );
        let _bob = hub.subscribe(key(), "bob", true).expect("bob");
        assert_eq!(
            hub.subscribe(key(), "carol", true).err(),
            Some(Refused::Total(3))
        );
        drop(first);
        assert!(
            hub.subscribe(key(), "alice", true).is_ok(),
            "a place not given back"
        );
        let operators = self::hub(1, 3);
        let _one = operators.subscribe(key(), "operator", false).expect("one");
        assert!(
            operators.subscribe(key(), "operator", false).is_ok(),
            "an operator held to 1 per token"
        );
    }

    #[test]
    fn an_announcement_wakes_the_feeds_of_its_accounts_and_owners_only() {
        use futures::FutureExt;
        let hub = hub(10, 10);
        let account = hub
            .subscribe(Key::Account("a1".into()), "s", true)
            .expect("a");
        let owner = hub
            .subscribe(Key::Owner("alice".into()), "s", true)
            .expect("o");
        let other = hub
            .subscribe(Key::Account("a2".into()), "s", true)
            .expect("x");
        hub.dispatch(r#"{"p":0,"to":5,"c":[{"a":"a1","o":"alice"}]}"#);
        // A wake is a stored permit: `notified()` completes on its first poll, or was not woken.
        let woken = |s: &Subscription| s.wake.notified().now_or_never().is_some();
        assert!(woken(&account), "the account's feed slept");
        assert!(woken(&owner), "the owner's feed slept");
        assert!(!woken(&other), "another account's feed was woken");
        hub.dispatch("not json");
        assert!(woken(&other), "an unreadable notice must wake everyone");
    }
}
