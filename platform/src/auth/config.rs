//! Token settings every service that checks or sends tokens flattens.

use std::path::PathBuf;

use secrecy::SecretString;

#[derive(Debug, Clone, clap::Args)]
pub struct AuthConfig {
    /// HS256 shared secret (development). Never logged.
    #[arg(
        long = "auth-hs256-secret",
        env = "TALLY_AUTH_HS256_SECRET",
        hide_env_values = true
    )]
    pub hs256_secret: Option<SecretString>,
    /// File holding the HS256 shared secret (its whole content, surrounding whitespace ignored).
    #[arg(long = "auth-hs256-secret-file", env = "TALLY_AUTH_HS256_SECRET_FILE")]
    pub hs256_secret_file: Option<PathBuf>,
    /// PEM public key (RSA for RS256, Ed25519 for EdDSA) that tokens are verified with: the
    /// public half of the key the token issuer signs them with.
    #[arg(long = "auth-public-key-file", env = "TALLY_AUTH_PUBLIC_KEY_FILE")]
    pub public_key_file: Option<PathBuf>,
    /// JWKS file (`{"keys": [...]}`, RS256 and EdDSA keys); a token's `kid` picks the key.
    #[arg(long = "auth-jwks-file", env = "TALLY_AUTH_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` of every token.
    #[arg(
        long = "auth-issuer",
        env = "TALLY_AUTH_ISSUER",
        default_value = "tally-dev"
    )]
    pub issuer: String,
    /// Required `aud` of every token.
    #[arg(
        long = "auth-audience",
        env = "TALLY_AUTH_AUDIENCE",
        default_value = "tally"
    )]
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[arg(
        long = "auth-clock-skew-s",
        env = "TALLY_AUTH_CLOCK_SKEW_S",
        default_value_t = 30
    )]
    pub clock_skew_s: u64,
}
