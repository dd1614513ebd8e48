//! Property-based fuzz of the command front door (`incoming`): arbitrary subjects, headers and
//! bodies, with no token, a forged one or a valid one, must come out as a command or as a clear
//! rejection with a stable code, never as a panic. Pure: no servers (the integration suite
//! sends the same kind of input through NATS and checks that nothing is written).

use async_nats::HeaderMap;
use domain::ErrorCode;
use platform::auth::{AuthConfig, Scope, TokenVerifier};
use proptest::prelude::*;
use uuid::Uuid;

use crate::access::Access;
use crate::incoming;
use crate::schema_check::SchemaRegistry;

const SECRET: &str = "decode-fuzz-secret-of-thirty-two-bytes-or-more";

fn access() -> Access {
    let config = AuthConfig {
        hs256_secret: Some(secrecy::SecretString::from(SECRET)),
        hs256_secret_file: None,
        public_key_file: None,
        jwks_file: None,
        issuer: "tally-dev".to_owned(),
        audience: "tally".to_owned(),
        clock_skew_s: 30,
    };
    Access::new(
        TokenVerifier::from_config(&config).unwrap_or_else(|e| panic!("{e}")),
        0,
        0,
    )
}

fn valid_token(owner: Option<&str>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    platform::auth::mint_hs256(
        SECRET.as_bytes(),
        "tally-dev",
        "tally",
        "fuzzer",
        &[Scope::Admin],
        owner,
        now,
        600,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Header names the front door reads, and some it does not.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Authorization".to_owned()),
        Just("Tally-Command-Id".to_owned()),
        Just("Nats-Msg-Id".to_owned()),
        Just("Tally-Expected-Version".to_owned()),
        Just("Tally-Correlation-Id".to_owned()),
        Just("Tally-Causation-Id".to_owned()),
        Just("traceparent".to_owned()),
        "[A-Za-z][A-Za-z0-9-]{0,24}",
    ]
}

/// Header values as the wire can carry them (no CR or LF), long ones included.
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\r\n]{0,64}",
        "[^\r\n]{0,4096}",
        Just("Bearer ".to_owned()),
        "Bearer [A-Za-z0-9._-]{0,300}",
        Just(Uuid::nil().to_string()),
        "-?[0-9]{1,30}",
    ]
}

/// Bodies: raw bytes, and JSON objects with the fields commands have, of any type.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        Just("account_id"),
        Just("amount"),
        Just("owner"),
        Just("currency"),
        Just("transfer_id"),
        Just("from"),
        Just("to"),
        Just("reference"),
        Just("reason"),
        Just("channel"),
        Just("extra"),
    ];
    let value = prop_oneof![
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        "[^\u{0}]{0,40}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
        Just(serde_json::json!([1, "a", null])),
        Just(serde_json::json!({"nested": {"deep": true}})),
        Just(serde_json::Value::from(Uuid::nil().to_string())),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        proptest::collection::btree_map(field, value, 0..8).prop_map(|m| {
            serde_json::to_vec(
                &m.into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect::<serde_json::Map<_, _>>(),
            )
            .unwrap_or_default()
        }),
    ]
}

fn subject() -> impl Strategy<Value = (String, String)> {
    let known = prop_oneof![
        Just(("account".to_owned(), "deposit".to_owned())),
        Just(("account".to_owned(), "open".to_owned())),
        Just(("account".to_owned(), "debit".to_owned())),
        Just(("transfer".to_owned(), "request".to_owned())),
        Just(("transfer".to_owned(), "fail".to_owned())),
    ];
    prop_oneof![known, ("[^.]{0,12}", "[^.]{0,12}")]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn any_message_is_a_command_or_a_clear_rejection(
        (aggregate, name) in subject(),
        headers in proptest::collection::vec((header_name(), header_value()), 0..6),
        token in prop_oneof![Just(None), Just(Some(None)), Just(Some(Some("alice")))],
        body in body(),
    ) {
        let access = access();
        let schemas = SchemaRegistry::load().unwrap_or_else(|e| panic!("{e}"));
        let mut map = HeaderMap::new();
        for (name, value) in &headers {
            map.insert(name.as_str(), value.as_str());
        }
        if let Some(owner) = token {
            map.insert("Authorization", format!("Bearer {}", valid_token(owner)).as_str());
        }
        let fallback = Uuid::now_v7();
        // As both doors do: a malformed id is named only to an authenticated sender.
        let outcome = incoming::command_id(Some(&map), fallback)
            .map_err(|rejection| access.refuse_before_admission(Some(&map), rejection))
            .and_then(|id| {
                crate::access::admit(&access, id, &aggregate, &name, Some(&map), &body, &schemas)
            });
        match outcome {
            Ok(command) => {
                // Only a verified token gets this far, and only for a command that exists.
                prop_assert!(token.is_some());
                prop_assert!(schemas.knows(&aggregate, &name));
                prop_assert_eq!(command.aggregate_type(), aggregate.as_str());
            }
            Err(rejection) => {
                let reply = rejection.into_reply(fallback);
                let domain::CommandReply::Rejected { error, .. } = reply else {
                    panic!("a rejection became {reply:?}");
                };
                prop_assert!(ErrorCode::ALL.contains(&error.code));
                prop_assert!(!error.message.is_empty());
                if token.is_none() {
                    // Who sends it is checked before anything about it is said.
                    prop_assert_eq!(error.code, ErrorCode::Unauthenticated);
                }
            }
        }
    }
}
