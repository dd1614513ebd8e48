//! The tamper-evident hash chain over each aggregate's events (docs/design/hash-chain.md), and the Merkle root
//! over all chain heads that audit digests publish.
//!
//! The byte layout is a public contract: docs/design/hash-chain.md restates it so a third
//! party can recompute every hash without this code. Change it only with a new
//! [`CHAIN_FORMAT`] and a migration path.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Identifies the canonical layout below; the first bytes hashed for every event.
pub const CHAIN_FORMAT: &[u8] = b"tally-chain-v1";

/// Length of a chain hash (SHA-256).
pub const HASH_LEN: usize = 32;

pub type ChainHash = [u8; HASH_LEN];

/// The "previous hash" of an aggregate's first event.
pub const GENESIS: ChainHash = [0; HASH_LEN];

/// The stored fields of one event that the chain covers.
#[derive(Debug, Clone, Copy)]
pub struct ChainedEvent<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: u64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub payload: &'a Value,
    pub metadata: &'a Value,
}

/// `sha256(prev || canonical_bytes(event))`.
pub fn event_hash(prev: &ChainHash, event: &ChainedEvent<'_>) -> ChainHash {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(canonical_bytes(event));
    hasher.finalize().into()
}

/// `"tally-chain-v1"`, then each field as a 4-byte big-endian length and its bytes, except the
/// sequence, which is 8 bytes big-endian: aggregate type, aggregate id, sequence, event type,
/// event version, canonical JSON of the payload, canonical JSON of the metadata.
pub fn canonical_bytes(event: &ChainedEvent<'_>) -> Vec<u8> {
    let payload = canonical_json(event.payload);
    let metadata = canonical_json(event.metadata);
    let mut out = Vec::with_capacity(
        CHAIN_FORMAT.len()
            + 64
            + event.aggregate_type.len()
            + event.aggregate_id.len()
            + event.event_type.len()
            + event.event_version.len()
            + payload.len()
            + metadata.len(),
    );
    out.extend_from_slice(CHAIN_FORMAT);
    push_field(&mut out, event.aggregate_type.as_bytes());
    push_field(&mut out, event.aggregate_id.as_bytes());
    out.extend_from_slice(&event.sequence.to_be_bytes());
    push_field(&mut out, event.event_type.as_bytes());
    push_field(&mut out, event.event_version.as_bytes());
    push_field(&mut out, &payload);
    push_field(&mut out, &metadata);
    out
}

fn push_field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Fields are bounded far below 4 GiB (bodies are at most 64 KiB); saturating keeps this
    // total without a panic path.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// JSON without whitespace, object keys sorted by their UTF-8 bytes, strings escaped as
/// serde_json does (`\"`, `\\`, `\b \f \n \r \t`, other control characters as `\u00xx`,
/// everything else literal UTF-8). Python's `json.dumps(v, sort_keys=True,
/// separators=(",", ":"), ensure_ascii=False)` gives the same bytes for the values Tally stores.
/// Postgres `jsonb` does not keep key order, so the order must come from here, not from storage.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Serialised as a JSON string, exactly as `Value::String` would be, without
                // copying the key into one.
                let _ = serde_json::to_writer(&mut *out, key.as_str());
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Serialising a scalar Value into a Vec cannot fail; an empty write would only make the hash
    // mismatch, never pass.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Leaf of the chain-heads Merkle tree: one aggregate's head.
pub fn merkle_leaf(
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: u64,
    head: &ChainHash,
) -> ChainHash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    let mut fields = Vec::with_capacity(aggregate_type.len() + aggregate_id.len() + 16);
    push_field(&mut fields, aggregate_type.as_bytes());
    push_field(&mut fields, aggregate_id.as_bytes());
    fields.extend_from_slice(&sequence.to_be_bytes());
    hasher.update(&fields);
    hasher.update(head);
    hasher.finalize().into()
}

/// Root over leaves given in (aggregate type, aggregate id) byte order: each level pairs
/// neighbours as `sha256(0x01 || left || right)`, an odd last node moves up unchanged. The
/// root of no leaves is [`GENESIS`]. The 0x00/0x01 prefixes keep leaves and nodes apart.
pub fn merkle_root(mut level: Vec<ChainHash>) -> ChainHash {
    if level.is_empty() {
        return GENESIS;
    }
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        for pair in level.chunks(2) {
            match pair {
                [left, right] => {
                    let mut hasher = Sha256::new();
                    hasher.update([1u8]);
                    hasher.update(left);
                    hasher.update(right);
                    next.push(hasher.finalize().into());
                }
                [odd] => next.push(*odd),
                _ => {}
            }
        }
        level = next;
    }
    level[0]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event<'a>(payload: &'a Value, metadata: &'a Value, sequence: u64) -> ChainedEvent<'a> {
        ChainedEvent {
            aggregate_type: "account",
            aggregate_id: "acc-1",
            sequence,
            event_type: "MoneyDeposited",
            event_version: "2.0",
            payload,
            metadata,
        }
    }

    #[test]
    fn canonical_json_sorts_keys_and_drops_whitespace() {
        let v = json!({"b": 1, "a": {"d": [1, "x\n"], "c": null}, "é": true});
        assert_eq!(
            String::from_utf8(canonical_json(&v)).unwrap(),
            r#"{"a":{"c":null,"d":[1,"x\n"]},"b":1,"é":true}"#
        );
    }

    #[test]
    fn any_changed_field_or_predecessor_changes_the_hash() {
        let payload = json!({"MoneyDeposited": {"amount": 100, "reference": "r"}});
        let metadata = json!({"actor": "alice"});
        let base = event_hash(&GENESIS, &event(&payload, &metadata, 1));
        let other_payload = json!({"MoneyDeposited": {"amount": 101, "reference": "r"}});
        let other_metadata = json!({"actor": "mallory"});
        assert_ne!(
            base,
            event_hash(&GENESIS, &event(&other_payload, &metadata, 1))
        );
        assert_ne!(
            base,
            event_hash(&GENESIS, &event(&payload, &other_metadata, 1))
        );
        assert_ne!(base, event_hash(&GENESIS, &event(&payload, &metadata, 2)));
        assert_ne!(base, event_hash(&[1; 32], &event(&payload, &metadata, 1)));
        // Field boundaries are length-prefixed, so moving a byte between fields is visible.
        let mut shifted = event(&payload, &metadata, 1);
        shifted.aggregate_type = "accoun";
        shifted.aggregate_id = "tacc-1";
        assert_ne!(base, event_hash(&GENESIS, &shifted));
        assert_eq!(base, event_hash(&GENESIS, &event(&payload, &metadata, 1)));
    }

    #[test]
    fn merkle_root_depends_on_every_leaf_and_its_position() {
        let leaves: Vec<ChainHash> = (0u8..5).map(|i| [i; 32]).collect();
        let root = merkle_root(leaves.clone());
        for i in 0..leaves.len() {
            let mut changed = leaves.clone();
            changed[i][0] ^= 0xff;
            assert_ne!(root, merkle_root(changed), "leaf {i}");
        }
        let mut swapped = leaves.clone();
        swapped.swap(0, 1);
        assert_ne!(root, merkle_root(swapped));
        assert_eq!(merkle_root(vec![[7; 32]]), [7; 32]);
        assert_eq!(merkle_root(Vec::new()), GENESIS);
    }
}
