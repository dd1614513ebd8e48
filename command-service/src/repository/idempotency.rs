//! Idempotency keys bound to their sender and their command (issue 21).
//!
//! A command id is global in Tally: it is the command log's key, it is in every event's metadata,
//! `<prefix>.results.<id>` and `GET /v1/commands/{id}` are named by it, and JetStream
//! deduplicates durable commands by it. So an id cannot be scoped per sender the way Stripe
//! scopes its `Idempotency-Key` per account; what Stripe also does, and what Tally does, is
//! refuse a reuse that is not a retry: the id answers with its logged reply only to the sender
//! that used it first (the token subject) sending the same command (aggregate, name and
//! canonical body); any other use gets `idempotency_mismatch`, worded the same whichever part
//! differs and saying nothing of the first command, and is itself never logged (the id keeps its
//! first answer). Ids are UUIDs a client draws, so learning that one is taken tells nothing.
//!
//! Rows logged before migration 0008 have no fingerprint and answer any later use, as they did.

use domain::{CommandReply, ErrorCode};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::incoming::{Command, IncomingCommand};
use crate::rejection::Rejection;

/// Names the fingerprint's layout, so that another layout can never produce the same bytes.
const FINGERPRINT_FORMAT: &[u8] = b"tally-command-v1";

/// Carries a command's fingerprint (hex) from the executor to `TallyRepository::persist`:
/// cqrs-es's `commit` passes nothing but the metadata through. `persist` removes it before the
/// events are hashed and written, so it is never stored with them.
pub(crate) const FINGERPRINT_METADATA: &str = "tally_command_fingerprint";

/// What a command log row is bound to: the sender and the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogKey {
    /// The token subject; `None` only on a row refused before its sender was known.
    pub(super) actor: Option<String>,
    /// `sha256` of the canonical command; empty on a row refused before its body was read,
    /// which is then bound to no command at all.
    pub(super) fingerprint: Vec<u8>,
}

impl LogKey {
    /// The key of a parsed command from its sender.
    pub fn of(incoming: &IncomingCommand) -> LogKey {
        let body = match &incoming.command {
            Command::Account(command) => command.to_json(),
            Command::Transfer(command) => command.to_json(),
        };
        LogKey {
            actor: Some(incoming.actor.clone()),
            fingerprint: fingerprint(incoming.aggregate_type(), incoming.command.name(), &body)
                .to_vec(),
        }
    }

    /// The key of a durable command refused before it was read (no sender, no command known):
    /// nothing is a retry of it, so every later use of its id is a mismatch and none is told
    /// what the refusal was.
    pub(super) fn unread() -> LogKey {
        LogKey {
            actor: None,
            fingerprint: Vec::new(),
        }
    }

    /// From what `persist` finds in an event's metadata.
    pub(super) fn from_metadata(metadata: &serde_json::Value) -> Option<LogKey> {
        let fingerprint = metadata
            .get(FINGERPRINT_METADATA)
            .and_then(serde_json::Value::as_str)
            .and_then(|h| hex::decode(h).ok())?;
        let actor = metadata
            .get(domain::metadata::KEY_ACTOR)
            .and_then(serde_json::Value::as_str)?;
        Some(LogKey {
            actor: Some(actor.to_owned()),
            fingerprint,
        })
    }

    /// The metadata entry that carries this key's fingerprint to `persist` (the actor travels
    /// as the metadata's own `actor`).
    pub fn metadata_entry(&self) -> (String, String) {
        (
            FINGERPRINT_METADATA.to_owned(),
            hex::encode(&self.fingerprint),
        )
    }

    /// What a logged row (its reply, and the key it was logged with, if any) answers to a
    /// command with this key under the same id.
    pub(super) fn answer(
        &self,
        logged: CommandReply,
        actor: Option<String>,
        fingerprint: Option<Vec<u8>>,
    ) -> CommandReply {
        let Some(fingerprint) = fingerprint else {
            // Logged before ids were bound: answered as it always was.
            return logged;
        };
        let retry = !fingerprint.is_empty()
            && fingerprint == self.fingerprint
            && actor.is_some()
            && actor == self.actor;
        if retry {
            logged
        } else {
            mismatch(logged.command_id())
        }
    }

    /// Whether a command with `other`'s key under this key's id is a retry (the group path
    /// compares two commands of one group this way).
    pub fn retried_by(&self, other: &LogKey) -> bool {
        !self.fingerprint.is_empty() && self.actor.is_some() && self == other
    }
}

/// The refusal of an id's reuse: the same words whatever differs, nothing of the first command.
pub fn mismatch(command_id: Uuid) -> CommandReply {
    Rejection::new(
        ErrorCode::IdempotencyMismatch,
        "this command id was already used for another command or by another sender; \
         send this command with a new command id",
    )
    .into_reply(command_id)
}

/// `sha256("tally-command-v1" || u32be(len) aggregate || u32be(len) name || u32be(len)
/// canonical JSON of the body)`. The body is the parsed command written back out, so the same
/// command spelled differently (key order, whitespace, a default written out) is the same.
pub fn fingerprint(aggregate: &str, name: &str, body: &serde_json::Value) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(FINGERPRINT_FORMAT);
    for part in [
        aggregate.as_bytes(),
        name.as_bytes(),
        &domain::hash_chain::canonical_json(body),
    ] {
        // A command body is at most 64 KiB, far below u32::MAX.
        hash.update(u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(actor: &str, body: serde_json::Value) -> LogKey {
        LogKey {
            actor: Some(actor.to_owned()),
            fingerprint: fingerprint("account", "deposit", &body).to_vec(),
        }
    }

    #[test]
    fn only_the_same_sender_with_the_same_command_is_a_retry() {
        let id = Uuid::from_u128(1);
        let logged = CommandReply::rejected(id, ErrorCode::Conflict, "first", json!({}));
        let alice = key("alice", json!({"account_id": "a", "amount": 5}));
        let (actor, fp) = (alice.actor.clone(), Some(alice.fingerprint.clone()));
        let answer = |k: &LogKey| k.answer(logged.clone(), actor.clone(), fp.clone());
        assert_eq!(answer(&alice), logged);
        assert_eq!(
            answer(&key("alice", json!({"amount": 5, "account_id": "a"}))),
            logged,
            "key order is not part of the command"
        );
        for other in [
            key("alice", json!({"account_id": "a", "amount": 6})),
            key("mallory", json!({"account_id": "a", "amount": 5})),
            LogKey::unread(),
        ] {
            assert_eq!(answer(&other), mismatch(id), "{other:?}");
        }
        // Bound to nothing: a mismatch for everyone, even a sender with no token subject.
        let unread = LogKey::unread();
        assert_eq!(
            alice.answer(logged.clone(), None, Some(Vec::new())),
            mismatch(id)
        );
        assert!(!unread.retried_by(&LogKey::unread()));
        // Logged before ids were bound: answers anyone.
        assert_eq!(alice.answer(logged.clone(), None, None), logged);
    }

    #[test]
    fn aggregate_and_name_are_part_of_the_command() {
        let body = json!({"account_id": "a", "amount": 5});
        assert_ne!(
            fingerprint("account", "deposit", &body),
            fingerprint("account", "withdraw", &body)
        );
        assert_ne!(
            fingerprint("account", "deposit", &body),
            fingerprint("transfer", "deposit", &body)
        );
    }
}
