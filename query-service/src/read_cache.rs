//! `GET /v1/accounts/{id}` from memory: the account rows read last, kept while nothing newer is
//! known to exist. What is newer is learnt from the events stream itself: the query-service
//! listens (core NATS, no consumer) to every account event the relay publishes, and an event
//! of sequence N makes a cached row of a lower version unservable until a read of the table
//! shows version N or later. Events reach this listener no later than they reach the
//! projection that writes the table, so in the normal course a cached row is never older than
//! the table.
//!
//! Two bounds hold even if notifications are lost (a reconnect, a slow listener): a row is
//! served for at most `ttl` after it was read, and a read presenting a consistency token is
//! served from memory only if the cached row has reached the token's version.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lru::LruCache;
use tokio_util::sync::CancellationToken;

use crate::accounts::AccountView;

struct Entries {
    /// Rows as read, and when the read began.
    views: LruCache<String, (Arc<AccountView>, Instant)>,
    /// The highest event sequence seen on the stream, per account (cached or not: a row read
    /// just after its event arrived must still be checked against it).
    seen: LruCache<String, i64>,
}

impl Entries {
    fn seen(&self, account_id: &str) -> i64 {
        self.seen.peek(account_id).copied().unwrap_or(0)
    }
}

pub struct ReadCache {
    entries: Option<Mutex<Entries>>,
    /// Serving from memory only while the account events are followed.
    following: AtomicBool,
    ttl: Duration,
    hits: prometheus::IntCounter,
    misses: prometheus::IntCounter,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl ReadCache {
    /// Up to `max` accounts (0: no cache), each served for at most `ttl` after it was read.
    pub fn new(
        max: usize,
        ttl: Duration,
        registry: &prometheus::Registry,
    ) -> Result<ReadCache, prometheus::Error> {
        let counter =
            |name: &str, help: &str| -> Result<prometheus::IntCounter, prometheus::Error> {
                let counter = prometheus::IntCounter::new(name, help)?;
                registry.register(Box::new(counter.clone()))?;
                Ok(counter)
            };
        Ok(ReadCache {
            entries: NonZeroUsize::new(max).map(|max| {
                Mutex::new(Entries {
                    views: LruCache::new(max),
                    seen: LruCache::new(max),
                })
            }),
            following: AtomicBool::new(false),
            ttl,
            hits: counter(
                "tally_read_cache_hits_total",
                "GET account answered from memory",
            )?,
            misses: counter(
                "tally_read_cache_misses_total",
                "GET account read from PostgreSQL",
            )?,
        })
    }

    /// The cached row of `account_id`, if it is at least `min_version`, no older than `ttl`,
    /// and no event newer than it has been seen.
    pub fn get(&self, account_id: &str, min_version: i64) -> Option<Arc<AccountView>> {
        let entries = self.entries.as_ref()?;
        if !self.following.load(Ordering::Acquire) {
            return None;
        }
        let found = {
            let mut entries = entries.lock().unwrap_or_else(|p| p.into_inner());
            let seen = entries.seen(account_id);
            entries.views.get(account_id).and_then(|(view, read_at)| {
                let current = view.version >= seen.max(min_version) && read_at.elapsed() < self.ttl;
                current.then(|| Arc::clone(view))
            })
        };
        match found {
            Some(_) => self.hits.inc(),
            None => self.misses.inc(),
        }
        found
    }

    /// A row just read from the table, kept unless a newer event has been seen (the projection
    /// has not applied it yet, so the next read must look again). `read_at` is taken before
    /// the read, so the row is never thought younger than it is.
    pub fn offer(&self, view: Arc<AccountView>, read_at: Instant) {
        let Some(entries) = &self.entries else {
            return;
        };
        let mut entries = entries.lock().unwrap_or_else(|p| p.into_inner());
        if view.version < entries.seen(&view.account_id) {
            return;
        }
        let newer = entries
            .views
            .peek(&view.account_id)
            .is_none_or(|(old, _)| view.version >= old.version);
        if newer {
            entries.views.put(view.account_id.clone(), (view, read_at));
        }
    }

    /// The stream has an event of `sequence` for `account_id`.
    pub fn saw(&self, account_id: &str, sequence: i64) {
        let Some(entries) = &self.entries else {
            return;
        };
        let mut entries = entries.lock().unwrap_or_else(|p| p.into_inner());
        let seen = entries
            .seen
            .get_or_insert_mut(account_id.to_owned(), || sequence);
        *seen = (*seen).max(sequence);
    }

    /// Follows `subject` (the account events) until `shutdown`; every event marks its account.
    pub async fn follow(
        self: Arc<Self>,
        nats: async_nats::Client,
        subject: String,
        shutdown: CancellationToken,
    ) {
        if self.entries.is_none() {
            return;
        }
        let mut events = match nats.subscribe(subject.clone()).await {
            Ok(events) => events,
            Err(error) => {
                // Without notifications every row would be served up to `ttl` late: better none.
                tracing::error!(%error, subject, "cannot follow account events; read cache off");
                return;
            }
        };
        self.following.store(true, Ordering::Release);
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => break,
                message = events.next() => message,
            };
            let Some(message) = message else { break };
            let Some(headers) = &message.headers else {
                continue;
            };
            let id = headers.get(domain::envelope::headers::AGGREGATE_ID);
            let sequence = headers
                .get(domain::envelope::headers::SEQUENCE)
                .and_then(|s| s.as_str().parse::<i64>().ok());
            if let (Some(id), Some(sequence)) = (id, sequence) {
                self.saw(id.as_str(), sequence);
            }
        }
        self.following.store(false, Ordering::Release);
        let _ = events.unsubscribe().await;
    }
}
