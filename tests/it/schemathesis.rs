//! Property-based HTTP testing with schemathesis (PyPI) against `/openapi.json` of a live
//! query-service: no 5xx and no response that breaks the documented schema, for any input.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use tests::TestApp;
use tests::client::accepted;

/// `TALLY_SCHEMATHESIS`, else the one `./dev test` installs into `.dev/venv`.
fn schemathesis() -> PathBuf {
    std::env::var_os("TALLY_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| tests::binaries::repo_root().join(".dev/venv/bin/st"))
}

#[tokio::test]
async fn schemathesis_finds_no_server_errors_or_schema_violations() {
    let st = schemathesis();
    assert!(
        st.exists(),
        "{} missing: run `./dev test` (it installs schemathesis)",
        st.display()
    );
    let app = TestApp::spawn().await;
    // Data behind the endpoints, so the fuzzer also sees 200s with real bodies.
    for id in ["s1", "s2"] {
        accepted(
            &app.send(
                "account.open",
                json!({"account_id": id, "owner": "o", "currency": "EUR"}),
            )
            .await,
        );
        accepted(
            &app.send(
                "account.deposit",
                json!({"account_id": id, "amount": 10, "reference": "r"}),
            )
            .await,
        );
    }
    // An instance whose change feeds end within a moment: the fuzzer reads each response to
    // its end, and a feed otherwise lasts an hour.
    let mut query = app.start_binary("query-service", &["--feed-max-age-ms=300"]);
    query.wait_ready(Duration::from_secs(30)).await;
    let run = tokio::process::Command::new(&st)
        .arg("run")
        .arg(format!("{}/openapi.json", query.base_url()))
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance",
            "--max-examples",
            "25",
            "--request-timeout",
            "10",
            "--no-color",
            "--header",
            &format!("Authorization: Bearer {}", tests::app::admin_token()),
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("schemathesis finished within 10 minutes")
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    if std::env::var_os("TEST_LOG").is_some() {
        eprintln!("{report}");
    }
    // A run that tested nothing proves nothing.
    assert!(
        report.contains("passed"),
        "no operation was tested:\n{report}"
    );
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
