//! Minting HS256 tokens: `tally token mint` for development, and the process manager when it
//! shares the development secret.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::scope::Scope;

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("cannot sign the token")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

#[derive(Debug, Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    /// Space-separated, as in OAuth 2.0.
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<&'a str>,
}

/// A token for `subject` with `scopes`, valid from `now_s` for `ttl_s` seconds.
#[allow(clippy::too_many_arguments)]
pub fn mint_hs256(
    secret: &[u8],
    issuer: &str,
    audience: &str,
    subject: &str,
    scopes: &[Scope],
    owner: Option<&str>,
    now_s: u64,
    ttl_s: u64,
) -> Result<String, MintError> {
    let claims = MintedClaims {
        sub: subject,
        iss: issuer,
        aud: audience,
        iat: now_s,
        nbf: now_s,
        exp: now_s.saturating_add(ttl_s),
        scope: scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        owner,
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )?)
}
