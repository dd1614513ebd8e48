//! The aggregates this instance touched last, as of the last event it committed or read for
//! them, so a command on a warm aggregate skips the snapshot read and folds only what it has not
//! seen. Loading still asks the store for the events after the cached sequence (one indexed
//! read, usually empty), so a write by another instance is never missed; a commit that raced
//! one fails on the events primary key and is retried, as without the cache.
//!
//! Entries are only ever read and replaced under the aggregate's lock (`aggregate_locks`), so
//! the cache itself needs no ordering beyond its mutex.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

#[derive(Debug)]
pub struct AggregateCache<A> {
    entries: Option<Mutex<LruCache<String, (A, usize)>>>,
}

impl<A: Clone> AggregateCache<A> {
    /// Holds at most `capacity` aggregates, least recently used out first; 0 turns it off.
    pub fn new(capacity: usize) -> Self {
        AggregateCache {
            entries: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
        }
    }

    /// The state and the sequence it is as of.
    pub fn get(&self, aggregate_id: &str) -> Option<(A, usize)> {
        let entries = self.entries.as_ref()?;
        // A poisoned mutex only means a panic elsewhere; the entries are whole values.
        let mut entries = entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(aggregate_id).cloned()
    }

    pub fn put(&self, aggregate_id: &str, state: A, sequence: usize) {
        if let Some(entries) = &self.entries {
            let mut entries = entries.lock().unwrap_or_else(|p| p.into_inner());
            entries.put(aggregate_id.to_owned(), (state, sequence));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_can_be_off() {
        let cache = AggregateCache::new(2);
        cache.put("a", 1, 1);
        cache.put("b", 2, 2);
        cache.put("c", 3, 3);
        assert_eq!(cache.get("a"), None, "least recently used goes first");
        assert_eq!(cache.get("c"), Some((3, 3)));
        let off = AggregateCache::new(0);
        off.put("a", 1, 1);
        assert_eq!(off.get("a"), None);
    }
}
