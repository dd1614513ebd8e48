//! Who is asking, and what they may do: JWT bearer tokens validated the same way by the
//! command-service (header `Authorization` on the NATS message) and the query-service (HTTP
//! header), scopes, and the optional `owner` claim that confines a token to one owner's
//! accounts.
//!
//! Keys: an HS256 shared secret for development; RS256 or EdDSA public keys, from a PEM file
//! or a JWKS file, for production. `exp`, `nbf`, `iss` and `aud` are checked, with a
//! configurable clock skew.

mod config;
mod limiter;
mod mint;
mod scope;
mod verified_tokens;
mod verifier;

pub use verifier::hs256_secret;

pub use config::AuthConfig;
pub use limiter::{
    KeyedLimiter, PRUNE_EVERY, RATE_KEYS_MAX_DEFAULT, Throttled, register_keys_gauge,
};
pub use mint::{MintError, mint_hs256};
pub use scope::{Principal, Scope, UnknownScope};
pub use verifier::{AuthError, KeyError, TokenVerifier, bearer_token};
