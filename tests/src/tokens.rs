//! Tokens for tests: every test installation checks HS256 tokens signed with one secret.

/// The HS256 secret every test installation checks tokens with.
pub const TEST_AUTH_SECRET: &str = "tally-test-secret-0123456789abcdef0123456789";
/// The environment that gives a service binary the test secret (projections ignore it).
pub const TEST_AUTH_ENV: (&str, &str) = ("TALLY_AUTH_HS256_SECRET", TEST_AUTH_SECRET);

/// A token signed with the test secret, valid for a day.
pub fn mint_token(subject: &str, scopes: &[platform::auth::Scope], owner: Option<&str>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    platform::auth::mint_hs256(
        TEST_AUTH_SECRET.as_bytes(),
        "tally-dev",
        "tally",
        subject,
        scopes,
        owner,
        now,
        86_400,
    )
    .expect("mint a test token")
}

/// The flag that gives an in-process service the test secret.
pub fn auth_flag() -> String {
    format!("--auth-hs256-secret={TEST_AUTH_SECRET}")
}

/// The token the helpers send unless a test says otherwise: `admin`, subject `test-admin`.
pub fn admin_token() -> String {
    mint_token("test-admin", &[platform::auth::Scope::Admin], None)
}
