//! Idempotency keys bound to their sender and their command (issue 21).
//!
//! A command id is global in Tally: it is the command log's key, it is in every event's metadata,
//! `GET /v1/commands/{id}` is named by it, and JetStream deduplicates durable commands by it. So
//! an id cannot be scoped per sender the way Stripe scopes its `Idempotency-Key` per account;
//! what Stripe also does, and what Tally does, is refuse a reuse that is not a retry: the id
//! answers with its logged reply only to the sender that used it first (the token subject)
//! sending the same command (aggregate, name and canonical body); any other use gets
//! `idempotency_mismatch`, worded the same whichever part differs and saying nothing of the first
//! command, and is itself never logged (the id keeps its first answer). Ids are UUIDs a client
//! draws, so learning that one is taken tells nothing. The comparison itself is
//! `event_store::LogKey::answer`.
//!
//! Rows logged before migration 0008 have no fingerprint and answer any later use, as they did.

use event_store::LogKey;
use sha2::{Digest, Sha256};

use crate::incoming::{Command, IncomingCommand};

/// Names the fingerprint's layout, so that another layout can never produce the same bytes.
const FINGERPRINT_FORMAT: &[u8] = b"tally-command-v1";

/// The command-log key of a parsed command from its sender.
pub fn log_key(incoming: &IncomingCommand) -> LogKey {
    let body = match &incoming.command {
        Command::Account(command) => command.to_json(),
        Command::Transfer(command) => command.to_json(),
        // Plain structs of strings, integers and maps always serialise.
        Command::Transaction(command) => {
            serde_json::to_value(command).unwrap_or(serde_json::Value::Null)
        }
        Command::Hold(command) => command.to_json(),
    };
    LogKey {
        actor: Some(incoming.actor.clone()),
        fingerprint: fingerprint(incoming.aggregate_type(), incoming.command.name(), &body)
            .to_vec(),
    }
}

/// A command body is at most 64 KiB (`COMMAND_MESSAGE_MAX_BYTES` caps it well below 4 GiB), so
/// every part's length fits the fingerprint's u32 length prefix.
fn length_prefix(part: &[u8]) -> [u8; 4] {
    let length = u32::try_from(part.len());
    debug_assert!(
        length.is_ok(),
        "a fingerprinted part of {} bytes",
        part.len()
    );
    length.unwrap_or(u32::MAX).to_be_bytes()
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
        hash.update(length_prefix(part));
        hash.update(part);
    }
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{CommandReply, ErrorCode};
    use event_store::LoggedCommand;
    use event_store::command_log::mismatch;
    use serde_json::json;
    use uuid::Uuid;

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
        let row = |actor: Option<String>, fingerprint: Option<Vec<u8>>| LoggedCommand {
            reply: sqlx::types::Json(logged.clone()),
            actor,
            fingerprint,
        };
        let alices = row(alice.actor.clone(), Some(alice.fingerprint.clone()));
        let answer = |k: &LogKey| k.answer(alices.clone());
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
        assert_eq!(alice.answer(row(None, Some(Vec::new()))), mismatch(id));
        assert!(!LogKey::unread().retried_by(&LogKey::unread()));
        // Logged before ids were bound: answers anyone.
        assert_eq!(alice.answer(row(None, None)), logged);
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
