//! What audits read off a stored event (the row type is `event_store::StoredEvent`: stored
//! bytes, untouched by upcasting).

use chrono::{DateTime, Utc};

use crate::StoredEvent;

pub trait StoredEventExt {
    /// When the command was accepted (`metadata.recorded_at`, part of the chain), falling back
    /// to the row's insertion time.
    fn occurred_at(&self) -> DateTime<Utc>;

    /// The chain hash in hex; `None` on rows written before the chain existed.
    fn hash_hex(&self) -> Option<String>;
}

impl StoredEventExt for StoredEvent {
    fn occurred_at(&self) -> DateTime<Utc> {
        self.meta(domain::metadata::KEY_RECORDED_AT)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map_or(self.recorded_at, |t| t.with_timezone(&Utc))
    }

    fn hash_hex(&self) -> Option<String> {
        self.hash.as_deref().map(hex::encode)
    }
}
