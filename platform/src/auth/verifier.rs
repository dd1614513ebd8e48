//! Validating a bearer token into a [`Principal`].

use std::collections::BTreeSet;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::config::AuthConfig;
use super::scope::{Principal, Scope};
use super::verified_tokens::{VERIFIED_TOKENS_MAX, VerifiedTokens};

/// Why a request is not authenticated. The messages are safe to return to the caller: they
/// never include the token or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token (header `Authorization: Bearer <JWT>`)")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is not for this audience")]
    WrongAudience,
    #[error("the token is not from the expected issuer")]
    WrongIssuer,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token is malformed or uses an algorithm this installation does not accept")]
    Malformed,
    /// An `owner` claim that names nobody: refused, rather than read as "bound to no owner",
    /// which would give a token meant for one owner's accounts everyone's.
    #[error("the token's `owner` claim is empty: omit the claim, or name the owner")]
    EmptyOwner,
}

/// Why the configured keys cannot be used (at start-up).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no token key configured: set TALLY_AUTH_HS256_SECRET(_FILE), TALLY_AUTH_PUBLIC_KEY_FILE or TALLY_AUTH_JWKS_FILE"
    )]
    NoneConfigured,
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no RSA or Ed25519 public key in PEM form")]
    Pem { path: String },
    #[error("{path} is not a JWKS document with usable RS256 or EdDSA keys: {reason}")]
    Jwks { path: String, reason: String },
    #[error("the HS256 secret is shorter than 32 bytes")]
    WeakSecret,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    owner: Option<String>,
    /// Required (checked by jsonwebtoken); kept to re-check the window on a cached token.
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
}

/// One usable key with the algorithm it verifies.
struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

pub struct TokenVerifier {
    keys: Vec<Key>,
    issuer: String,
    audience: String,
    clock_skew_s: u64,
    verified: VerifiedTokens,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// The HS256 secret of `config`, if one is configured (from the value or the file).
pub fn hs256_secret(config: &AuthConfig) -> Result<Option<Vec<u8>>, KeyError> {
    if let Some(secret) = &config.hs256_secret {
        return Ok(Some(secret.expose_secret().trim().as_bytes().to_vec()));
    }
    let Some(path) = &config.hs256_secret_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(Some(text.trim().as_bytes().to_vec()))
}

impl TokenVerifier {
    pub fn from_config(config: &AuthConfig) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        if let Some(secret) = hs256_secret(config)? {
            if secret.len() < 32 {
                return Err(KeyError::WeakSecret);
            }
            keys.push(Key {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(&secret),
            });
        }
        if let Some(path) = &config.public_key_file {
            let pem = read(path)?;
            let (algorithm, key) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (Algorithm::RS256, key)
            } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
                (Algorithm::EdDSA, key)
            } else {
                return Err(KeyError::Pem {
                    path: path.display().to_string(),
                });
            };
            keys.push(Key {
                kid: None,
                algorithm,
                key,
            });
        }
        if let Some(path) = &config.jwks_file {
            let jwks_error = |reason: String| KeyError::Jwks {
                path: path.display().to_string(),
                reason,
            };
            let set: JwkSet =
                serde_json::from_slice(&read(path)?).map_err(|e| jwks_error(e.to_string()))?;
            for jwk in &set.keys {
                let algorithm = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                    _ => continue,
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| jwks_error(e.to_string()))?;
                keys.push(Key {
                    kid: jwk.common.key_id.clone(),
                    algorithm,
                    key,
                });
            }
            if keys.is_empty() {
                return Err(jwks_error("no RSA or Ed25519 key".into()));
            }
        }
        if keys.is_empty() {
            return Err(KeyError::NoneConfigured);
        }
        Ok(TokenVerifier {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            clock_skew_s: config.clock_skew_s,
            verified: VerifiedTokens::new(VERIFIED_TOKENS_MAX),
        })
    }

    /// The principal a token describes, if it is valid now.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let now_s = jsonwebtoken::get_current_timestamp();
        if let Some(principal) = self.verified.get(token, now_s, self.clock_skew_s) {
            return Ok(principal);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        // The header's algorithm only selects among the keys we hold for it: a token cannot
        // choose a weaker algorithm than its key (no `none`, no HS256 with a public key).
        let candidates = self.keys.iter().filter(|k| {
            k.algorithm == header.alg
                && (header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
        });
        let mut outcome = Err(AuthError::Malformed);
        for key in candidates {
            let mut validation = Validation::new(key.algorithm);
            validation.leeway = self.clock_skew_s;
            validation.validate_nbf = true;
            validation.set_issuer(&[&self.issuer]);
            validation.set_audience(&[&self.audience]);
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    let (exp, nbf) = (data.claims.exp, data.claims.nbf);
                    let principal = principal(data.claims)?;
                    self.verified.put(token, principal.clone(), exp, nbf);
                    return Ok(principal);
                }
                Err(error) => {
                    let mapped = map_error(&error);
                    // Another key may still verify it; remember the most telling failure.
                    if mapped != AuthError::BadSignature || outcome == Err(AuthError::Malformed) {
                        outcome = Err(mapped);
                    }
                }
            }
        }
        outcome
    }
}

fn principal(claims: Claims) -> Result<Principal, AuthError> {
    if claims.sub.is_empty() {
        return Err(AuthError::Malformed);
    }
    // Unknown scopes are ignored rather than refused: a token minted for a wider system may
    // carry scopes of other services.
    let scopes: BTreeSet<Scope> = claims
        .scope
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    if claims.owner.as_deref().is_some_and(|o| o.trim().is_empty()) {
        return Err(AuthError::EmptyOwner);
    }
    Ok(Principal {
        subject: claims.sub,
        scopes,
        owner: claims.owner,
    })
}

fn map_error(error: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match error.kind() {
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidAudience => AuthError::WrongAudience,
        K::InvalidIssuer => AuthError::WrongIssuer,
        K::InvalidSignature => AuthError::BadSignature,
        _ => AuthError::Malformed,
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The token of an `Authorization: Bearer <token>` value.
pub fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::mint_hs256;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    fn config() -> AuthConfig {
        AuthConfig {
            hs256_secret: Some(SECRET.to_owned().into()),
            hs256_secret_file: None,
            public_key_file: None,
            jwks_file: None,
            issuer: "tally-dev".into(),
            audience: "tally".into(),
            clock_skew_s: 5,
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn token(secret: &str, audience: &str, issued: u64, ttl: u64) -> String {
        mint_hs256(
            secret.as_bytes(),
            "tally-dev",
            audience,
            "alice",
            &[Scope::AccountsRead, Scope::TransfersWrite],
            Some("alice"),
            issued,
            ttl,
        )
        .unwrap_or_default()
    }

    #[test]
    fn a_valid_token_gives_its_subject_scopes_and_owner() {
        let verifier = TokenVerifier::from_config(&config()).unwrap_or_else(|e| panic!("{e}"));
        let principal = verifier.verify(&token(SECRET, "tally", now(), 60));
        assert_eq!(
            principal,
            Ok(Principal {
                subject: "alice".into(),
                scopes: [Scope::AccountsRead, Scope::TransfersWrite].into(),
                owner: Some("alice".into()),
            })
        );
    }

    #[test]
    fn invalid_tokens_are_refused_with_the_reason() {
        let verifier = TokenVerifier::from_config(&config()).unwrap_or_else(|e| panic!("{e}"));
        let other = "another-secret-that-is-long-enough-too";
        assert_eq!(
            verifier.verify(&token(SECRET, "tally", now() - 3_600, 60)),
            Err(AuthError::Expired)
        );
        assert_eq!(
            verifier.verify(&token(SECRET, "tally", now() + 3_600, 60)),
            Err(AuthError::NotYetValid)
        );
        assert_eq!(
            verifier.verify(&token(SECRET, "elsewhere", now(), 60)),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(
            verifier.verify(&token(other, "tally", now(), 60)),
            Err(AuthError::BadSignature)
        );
        assert_eq!(verifier.verify("not.a.jwt"), Err(AuthError::Malformed));
        // Within the clock skew, a just-expired token still passes.
        assert!(
            verifier
                .verify(&token(SECRET, "tally", now() - 62, 60))
                .is_ok()
        );
    }

    #[test]
    fn an_empty_owner_is_refused_not_read_as_unbound() {
        let verifier = TokenVerifier::from_config(&config()).unwrap_or_else(|e| panic!("{e}"));
        for owner in ["", " "] {
            let token = mint_hs256(
                SECRET.as_bytes(),
                "tally-dev",
                "tally",
                "alice",
                &[Scope::AccountsRead],
                Some(owner),
                now(),
                60,
            )
            .unwrap_or_default();
            assert_eq!(
                verifier.verify(&token),
                Err(AuthError::EmptyOwner),
                "owner {owner:?}"
            );
            // Refused again from the cache of verified tokens, too.
            assert_eq!(verifier.verify(&token), Err(AuthError::EmptyOwner));
        }
    }

    #[test]
    fn bearer_values_are_parsed_strictly() {
        assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer_token(None), Err(AuthError::Missing));
        assert_eq!(bearer_token(Some("Basic abc")), Err(AuthError::Malformed));
        assert_eq!(bearer_token(Some("Bearer ")), Err(AuthError::Malformed));
    }

    #[test]
    fn no_key_or_a_weak_secret_refuses_to_start() {
        let mut none = config();
        none.hs256_secret = None;
        assert!(matches!(
            TokenVerifier::from_config(&none),
            Err(KeyError::NoneConfigured)
        ));
        let mut weak = config();
        weak.hs256_secret = Some("short".to_owned().into());
        assert!(matches!(
            TokenVerifier::from_config(&weak),
            Err(KeyError::WeakSecret)
        ));
    }
}
