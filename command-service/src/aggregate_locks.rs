//! One command at a time per aggregate inside this instance, so commands on a hot account queue
//! instead of racing each other into optimistic-concurrency conflicts. Races between instances
//! are still caught by the events primary key and retried.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// Above this many entries, idle locks are swept on the next acquisition.
const ENTRIES_SWEEP_THRESHOLD: usize = 4_096;

#[derive(Debug, Default)]
pub struct AggregateLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl AggregateLocks {
    pub async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let lock = {
            // A poisoned map only means another task panicked mid-insert; its data is fine.
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            if locks.len() > ENTRIES_SWEEP_THRESHOLD {
                locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            locks.entry(key.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn same_key_is_exclusive_other_keys_are_not() {
        let locks = Arc::new(AggregateLocks::default());
        let held = locks.lock("a").await;
        let other = tokio::time::timeout(Duration::from_millis(50), locks.lock("b")).await;
        assert!(other.is_ok(), "different keys must not block");
        let same = tokio::time::timeout(Duration::from_millis(50), locks.lock("a")).await;
        assert!(same.is_err(), "same key must wait");
        drop(held);
        let same = tokio::time::timeout(Duration::from_millis(50), locks.lock("a")).await;
        assert!(same.is_ok());
    }
}
