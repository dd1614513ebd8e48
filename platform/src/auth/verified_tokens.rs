//! Tokens whose signature already verified, so that a client sending many commands with one
//! token pays for decoding and checking it once rather than on every message (it was about 4%
//! of the command-service's CPU). Only the time window is checked again on a hit: the key is the
//! whole token, signature included, so no other token can match an entry.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

use super::scope::Principal;

/// Distinct tokens remembered; the least recently used is forgotten first.
pub const VERIFIED_TOKENS_MAX: usize = 1024;

#[derive(Debug, Clone)]
struct Verified {
    principal: Principal,
    /// `exp` and `nbf` claims, seconds since the epoch.
    expires_at_s: u64,
    not_before_s: Option<u64>,
}

pub(super) struct VerifiedTokens {
    entries: Mutex<LruCache<String, Verified>>,
}

impl VerifiedTokens {
    pub(super) fn new(capacity: usize) -> Self {
        VerifiedTokens {
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// The principal of `token` if it verified before and is still inside its window at
    /// `now_s` (with jsonwebtoken's own rule: `exp` and `nbf` each widened by `skew_s`). A
    /// token past its window is forgotten, so the full check reports why.
    pub(super) fn get(&self, token: &str, now_s: u64, skew_s: u64) -> Option<Principal> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let verified = entries.get(token)?;
        let expired = verified.expires_at_s < now_s.saturating_sub(skew_s);
        let early = verified
            .not_before_s
            .is_some_and(|nbf| nbf > now_s.saturating_add(skew_s));
        if expired || early {
            entries.pop(token);
            return None;
        }
        Some(verified.principal.clone())
    }

    pub(super) fn put(
        &self,
        token: &str,
        principal: Principal,
        expires_at_s: u64,
        not_before_s: Option<u64>,
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.put(
            token.to_owned(),
            Verified {
                principal,
                expires_at_s,
                not_before_s,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn principal(subject: &str) -> Principal {
        Principal {
            subject: subject.into(),
            scopes: BTreeSet::new(),
            owner: None,
        }
    }

    #[test]
    fn a_hit_is_only_inside_the_tokens_window() {
        let tokens = VerifiedTokens::new(8);
        tokens.put("t", principal("a"), 1_000, Some(900));
        assert_eq!(tokens.get("t", 950, 0).map(|p| p.subject), Some("a".into()));
        assert!(tokens.get("other", 950, 0).is_none());
        // Not yet valid, unless the skew covers it.
        assert!(tokens.get("t", 850, 0).is_none());
        tokens.put("t", principal("a"), 1_000, Some(900));
        assert!(tokens.get("t", 850, 60).is_some());
        // Expired: past exp + skew, and forgotten from then on.
        assert!(tokens.get("t", 1_030, 60).is_some());
        assert!(tokens.get("t", 1_061, 60).is_none());
        assert!(tokens.get("t", 1_000, 60).is_none());
    }

    #[test]
    fn the_least_recently_used_token_is_forgotten_first() {
        let tokens = VerifiedTokens::new(2);
        tokens.put("a", principal("a"), 1_000, None);
        tokens.put("b", principal("b"), 1_000, None);
        assert!(tokens.get("a", 0, 0).is_some());
        tokens.put("c", principal("c"), 1_000, None);
        assert!(tokens.get("b", 0, 0).is_none());
        assert!(tokens.get("a", 0, 0).is_some());
        assert!(tokens.get("c", 0, 0).is_some());
    }
}
