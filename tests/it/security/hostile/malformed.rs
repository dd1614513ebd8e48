//! Requests that are not what a client sends: malformed headers picked by hand, and arbitrary
//! subjects, headers and bodies by fuzzing.

use async_nats::HeaderMap;
use platform::auth::Scope;
use serde_json::json;
use tests::client::{accepted, rejected_code};

use super::count;
use crate::security::{Secured, token};

#[tokio::test]
async fn malformed_headers_are_refused_and_write_nothing() {
    let secured = Secured::start().await;
    let app = &secured.app;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "h-m", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    let stored_before = count(app, "SELECT count(*) FROM events").await;
    let logged_before = count(app, "SELECT count(*) FROM command_log").await;
    let admin = format!("Bearer {}", tests::app::admin_token());
    let long = "x".repeat(16 * 1024);
    let cases: Vec<Vec<(&str, String)>> = vec![
        vec![("Authorization", "Bearer".to_owned())],
        vec![("Authorization", "Basic dGFsbHk6dGFsbHk=".to_owned())],
        vec![("Authorization", format!("Bearer {long}"))],
        vec![("Authorization", "Bearer a.b.c".to_owned())],
        vec![
            ("Authorization", admin.clone()),
            ("Tally-Command-Id", "not-a-uuid".to_owned()),
        ],
        vec![
            ("Authorization", admin.clone()),
            ("Tally-Command-Id", long.clone()),
        ],
        vec![
            ("Authorization", admin.clone()),
            ("Tally-Expected-Version", "-1".to_owned()),
        ],
        vec![
            ("Authorization", admin.clone()),
            (
                "Tally-Expected-Version",
                "99999999999999999999999".to_owned(),
            ),
        ],
        vec![
            ("Authorization", admin.clone()),
            ("Tally-Correlation-Id", "x".to_owned()),
        ],
        vec![
            ("Authorization", admin.clone()),
            ("Tally-Causation-Id", long.clone()),
        ],
    ];
    for case in &cases {
        let mut headers = HeaderMap::new();
        for (name, value) in case {
            headers.insert(*name, value.as_str());
        }
        let reply = app
            .send_raw(
                "account.deposit",
                headers,
                serde_json::to_vec(&json!({"account_id": "h-m", "amount": 3})).unwrap(),
            )
            .await;
        let code = rejected_code(&reply);
        assert!(
            matches!(
                code,
                domain::ErrorCode::Unauthenticated | domain::ErrorCode::SchemaViolation
            ),
            "{case:?} answered {code:?}"
        );
    }
    // The honest request after them is the marker that all were handled.
    accepted(
        &app.send("account.deposit", json!({"account_id": "h-m", "amount": 1}))
            .await,
    );
    assert_eq!(
        count(app, "SELECT count(*) FROM events").await,
        stored_before + 1
    );
    assert_eq!(
        count(app, "SELECT count(*) FROM command_log").await,
        logged_before + 1
    );
}

/// Bounded fuzz of the live ingress: arbitrary subjects under `cmd`, headers and bodies,
/// without a valid token or with one and a body that is not a command. Every request gets a
/// rejection with a stable code (so nothing panicked and the service still answers), and
/// nothing is written.
#[tokio::test]
async fn arbitrary_requests_get_a_clear_rejection_and_write_nothing() {
    use proptest::strategy::{Strategy, ValueTree};
    let app = tests::TestApp::spawn().await;
    let client = token(&[Scope::AccountsWrite, Scope::TransfersWrite], Some("fuzz"));
    let case = (
        proptest::sample::select(vec![
            "account.deposit",
            "account.open",
            "account.withdraw",
            "transfer.request",
            "account.debit",
            "nope.nope",
        ]),
        proptest::collection::vec(
            (
                proptest::sample::select(vec![
                    "Authorization",
                    "Tally-Command-Id",
                    "Tally-Expected-Version",
                    "Tally-Correlation-Id",
                    "traceparent",
                    "X-Other",
                ]),
                "[ -~]{0,200}",
            ),
            0..5,
        ),
        proptest::bool::ANY,
        proptest::collection::vec(proptest::num::u8::ANY, 0..2_048),
    );
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let stored_before = count(&app, "SELECT count(*) FROM events").await;
    let logged_before = count(&app, "SELECT count(*) FROM command_log").await;
    for _ in 0..150 {
        let (command, headers, with_token, mut body) =
            case.new_tree(&mut runner).unwrap().current();
        // A body that is never a command: not JSON, whatever the bytes.
        body.insert(0, b'#');
        let mut map = HeaderMap::new();
        for (name, value) in &headers {
            map.insert(*name, value.as_str());
        }
        if with_token {
            map.insert("Authorization", format!("Bearer {client}").as_str());
        } else if map.get("Authorization").is_none() {
            map.insert("Authorization", "");
        }
        let reply = app.send_raw(command, map, body).await;
        let code = rejected_code(&reply);
        assert!(domain::ErrorCode::ALL.contains(&code), "{code:?}");
    }
    // The service still works, and the fuzz wrote nothing.
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "h-fuzz", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM events").await,
        stored_before + 1
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM command_log").await,
        logged_before + 1
    );
}
