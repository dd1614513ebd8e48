//! Nobody writes or reads what they should not: tokens, scopes, owners and rates, on every
//! command subject and every HTTP endpoint, against the real services.

mod commands;
mod http;
mod nats;

use platform::auth::Scope;
use tests::app::{TEST_AUTH_SECRET, mint_token};

/// A token that fails for `reason`, and what the services must answer.
pub fn bad_tokens() -> Vec<(&'static str, String)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mint = |secret: &str, audience: &str, issued: u64| {
        platform::auth::mint_hs256(
            secret.as_bytes(),
            "tally-dev",
            audience,
            "mallory",
            &[Scope::Admin],
            None,
            issued,
            600,
        )
        .unwrap()
    };
    vec![
        ("expired", mint(TEST_AUTH_SECRET, "tally", now - 7_200)),
        (
            "wrong signature",
            mint("another-secret-of-sufficient-length-here", "tally", now),
        ),
        ("wrong audience", mint(TEST_AUTH_SECRET, "elsewhere", now)),
        ("garbage", "not-a-jwt".to_owned()),
    ]
}

pub fn token(scopes: &[Scope], owner: Option<&str>) -> String {
    mint_token("tester", scopes, owner)
}
