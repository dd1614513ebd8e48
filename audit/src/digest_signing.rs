//! Ed25519 signatures on audit digests (a *signed* summary, docs/design/audit-digests.md), so a digest kept by an
//! auditor or read from the stream cannot be replaced by a tamperer who lacks the key.
//!
//! Signed bytes: `"tally-digest-v1"`, then `as_of_tx`, `position`, `event_count`,
//! `aggregate_count` as 8-byte big-endian integers, the 32-byte Merkle root, and `taken_at` as
//! RFC 3339 text (4-byte big-endian length first).

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::digest::{DIGEST_FORMAT, Digest};

pub const ALGORITHM: &str = "ed25519";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestSignature {
    pub algorithm: String,
    /// Hex of the 32-byte public key.
    pub public_key: String,
    /// Hex of the 64-byte signature.
    pub signature: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the signing key file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the signing key file {0} must hold 64 hex digits (an ed25519 secret key)")]
    Format(String),
}

/// Reads a secret key file: 64 hex digits, surrounding whitespace ignored.
pub fn load_signing_key(path: &std::path::Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let bytes =
        hex::decode(text.trim()).map_err(|_| KeyError::Format(path.display().to_string()))?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| KeyError::Format(path.display().to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A new key pair from 32 random bytes: (secret hex, public hex).
pub fn generate_key() -> (String, String) {
    let seed: [u8; 32] = rand::random();
    let key = SigningKey::from_bytes(&seed);
    (
        hex::encode(seed),
        hex::encode(key.verifying_key().to_bytes()),
    )
}

pub fn public_key_hex(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().to_bytes())
}

fn signed_bytes(digest: &Digest) -> Vec<u8> {
    let taken_at = digest.taken_at.to_rfc3339();
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(DIGEST_FORMAT.as_bytes());
    out.extend_from_slice(&digest.as_of_tx.to_be_bytes());
    out.extend_from_slice(&digest.position.to_be_bytes());
    out.extend_from_slice(&digest.event_count.to_be_bytes());
    out.extend_from_slice(&digest.aggregate_count.to_be_bytes());
    out.extend_from_slice(&hex::decode(&digest.merkle_root).unwrap_or_default());
    out.extend_from_slice(
        &u32::try_from(taken_at.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(taken_at.as_bytes());
    out
}

pub fn sign(digest: &mut Digest, key: &SigningKey) {
    let signature = key.sign(&signed_bytes(digest));
    digest.signature = Some(DigestSignature {
        algorithm: ALGORITHM.to_owned(),
        public_key: public_key_hex(key),
        signature: hex::encode(signature.to_bytes()),
    });
}

/// Checks the digest's signature; with `pinned`, also that it was made with that public key.
/// An unsigned digest passes only when no key is pinned.
pub fn check(digest: &Digest, pinned: Option<&str>) -> Result<(), String> {
    let Some(signed) = &digest.signature else {
        return match pinned {
            Some(_) => Err("the digest is not signed, but a public key was given".into()),
            None => Ok(()),
        };
    };
    if signed.algorithm != ALGORITHM {
        return Err(format!(
            "unknown signature algorithm `{}`",
            signed.algorithm
        ));
    }
    if let Some(pinned) = pinned
        && !pinned.trim().eq_ignore_ascii_case(&signed.public_key)
    {
        return Err(format!(
            "signed by {}, not by the expected key {pinned}",
            signed.public_key
        ));
    }
    let key: [u8; 32] = hex::decode(&signed.public_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the public key is not 32 bytes of hex")?;
    let key = VerifyingKey::from_bytes(&key).map_err(|e| format!("bad public key: {e}"))?;
    let signature: [u8; 64] = hex::decode(&signed.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the signature is not 64 bytes of hex")?;
    key.verify(&signed_bytes(digest), &Signature::from_bytes(&signature))
        .map_err(|_| "the signature does not match the digest".to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        Digest {
            format: DIGEST_FORMAT.into(),
            as_of_tx: 42,
            position: 7,
            event_count: 7,
            aggregate_count: 2,
            merkle_root: hex::encode([9u8; 32]),
            taken_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            signature: None,
        }
    }

    #[test]
    fn a_signed_digest_verifies_and_any_change_breaks_it() {
        let (secret, public) = generate_key();
        let key = SigningKey::from_bytes(&hex::decode(secret).unwrap().try_into().unwrap());
        let mut signed = digest();
        sign(&mut signed, &key);
        assert_eq!(check(&signed, Some(&public)), Ok(()));
        assert_eq!(check(&signed, None), Ok(()));
        let mut changed = signed.clone();
        changed.event_count += 1;
        assert!(check(&changed, None).is_err());
        let (_, other) = generate_key();
        assert!(check(&signed, Some(&other)).is_err());
        assert!(
            check(&digest(), Some(&public)).is_err(),
            "unsigned but a key is pinned"
        );
        assert_eq!(check(&digest(), None), Ok(()));
    }

    #[test]
    fn a_key_file_must_hold_exactly_a_hex_secret() {
        let dir = std::env::temp_dir().join(format!("tally-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        let (secret, public) = generate_key();
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        assert_eq!(public_key_hex(&load_signing_key(&path).unwrap()), public);
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(load_signing_key(&path), Err(KeyError::Format(_))));
        std::fs::write(&path, "abcd").unwrap();
        assert!(matches!(load_signing_key(&path), Err(KeyError::Format(_))));
        assert!(matches!(
            load_signing_key(&dir.join("missing")),
            Err(KeyError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
