//! Production keys: RS256 and EdDSA tokens verified from a PEM public key or a JWKS file, and
//! tokens signed by any other key refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use platform::auth::{AuthConfig, AuthError, Scope, TokenVerifier};
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn config(public_key: Option<&str>, jwks: bool) -> AuthConfig {
    AuthConfig {
        hs256_secret: None,
        hs256_secret_file: None,
        public_key_file: public_key.map(fixture),
        jwks_file: jwks.then(|| fixture("jwks.json")),
        issuer: "https://id.example".into(),
        audience: "tally".into(),
        clock_skew_s: 5,
    }
}

fn sign(algorithm: Algorithm, private_pem: &str, kid: Option<&str>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "sub": "svc", "iss": "https://id.example", "aud": "tally",
        "exp": now + 60, "nbf": now, "scope": "accounts:read"
    });
    let pem = std::fs::read(fixture(private_pem)).unwrap();
    let key = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ed_pem(&pem).unwrap(),
    };
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

#[test]
fn rs256_and_eddsa_from_pem_public_keys() {
    let rsa = TokenVerifier::from_config(&config(Some("rsa.pub.pem"), false)).unwrap();
    let principal = rsa
        .verify(&sign(Algorithm::RS256, "rsa.pem", None))
        .unwrap();
    assert_eq!(principal.subject, "svc");
    assert!(principal.allows(Scope::AccountsRead));
    let ed = TokenVerifier::from_config(&config(Some("ed.pub.pem"), false)).unwrap();
    assert!(ed.verify(&sign(Algorithm::EdDSA, "ed.pem", None)).is_ok());
    // A key the installation does not hold: refused, whatever the algorithm.
    assert!(rsa.verify(&sign(Algorithm::EdDSA, "ed.pem", None)).is_err());
    assert!(ed.verify(&sign(Algorithm::RS256, "rsa.pem", None)).is_err());
}

#[test]
fn a_jwks_file_serves_both_algorithms_by_kid() {
    let verifier = TokenVerifier::from_config(&config(None, true)).unwrap();
    assert!(
        verifier
            .verify(&sign(Algorithm::RS256, "rsa.pem", Some("rsa-1")))
            .is_ok()
    );
    assert!(
        verifier
            .verify(&sign(Algorithm::EdDSA, "ed.pem", Some("ed-1")))
            .is_ok()
    );
    assert!(
        verifier
            .verify(&sign(Algorithm::EdDSA, "ed.pem", None))
            .is_ok()
    );
    // A kid the set does not hold selects no key.
    assert_eq!(
        verifier.verify(&sign(Algorithm::RS256, "rsa.pem", Some("rotated-away"))),
        Err(AuthError::Malformed)
    );
}

#[test]
fn an_hs256_token_cannot_pass_as_signed_by_a_public_key() {
    // The classic confusion: HMAC "signed" with the public key's bytes.
    let verifier = TokenVerifier::from_config(&config(Some("rsa.pub.pem"), false)).unwrap();
    let public = std::fs::read(fixture("rsa.pub.pem")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "x", "iss": "https://id.example", "aud": "tally", "exp": now + 60, "scope": "admin"}),
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    assert!(verifier.verify(&forged).is_err());
}
