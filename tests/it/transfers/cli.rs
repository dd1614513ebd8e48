//! `tally transfer send|show|list`, run the way a person runs them.

use uuid::Uuid;

use tests::TestApp;
use tests::tally_cli::stdout;

use super::open;

#[tokio::test]
async fn send_waits_for_the_outcome_and_show_and_list_find_it() {
    let app = TestApp::spawn().await;
    open(&app, "cli-a", "EUR", 1_000).await;
    open(&app, "cli-b", "EUR", 0).await;
    let id = Uuid::now_v7().to_string();
    let sent = app
        .tally(&[
            "transfer",
            "send",
            "--from",
            "cli-a",
            "--to",
            "cli-b",
            "--amount",
            "250",
            "--transfer-id",
            &id,
        ])
        .await;
    assert_eq!(sent.status.code(), Some(0), "{sent:?}");
    assert!(
        stdout(&sent).contains(&format!("{id} completed")),
        "{}",
        stdout(&sent)
    );

    let shown = app.tally(&["transfer", "show", &id, "--json"]).await;
    assert_eq!(shown.status.code(), Some(0), "{shown:?}");
    let body: serde_json::Value = serde_json::from_str(stdout(&shown).trim()).unwrap();
    assert_eq!(body["amount"], 250);
    assert_eq!(body["status"], "completed");

    let listed = app
        .tally(&["transfer", "list", "--id", "cli-b", "--direction", "in"])
        .await;
    assert!(stdout(&listed).contains(&id), "{}", stdout(&listed));

    // Refused for want of funds: the transfer fails, the exit status says so.
    let failed = app
        .tally(&[
            "transfer", "send", "--from", "cli-b", "--to", "cli-a", "--amount", "251",
        ])
        .await;
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    assert!(stdout(&failed).contains("failed"), "{}", stdout(&failed));
    assert!(
        stdout(&failed).contains("insufficient_funds"),
        "{}",
        stdout(&failed)
    );

    // Both projections report their own lag (not the other's events): zero once caught up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = app.tally(&["--json", "projections", "status"]).await;
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        let lags: Vec<(String, i64)> = status
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["projection"].as_str().unwrap().to_owned(),
                    p["lag"].as_i64().unwrap(),
                )
            })
            .collect();
        if lags == [("accounts".to_owned(), 0), ("transfers".to_owned(), 0)] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{lags:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Refused outright (same account): nothing requested.
    let refused = app
        .tally(&[
            "transfer", "send", "--from", "cli-a", "--to", "cli-a", "--amount", "1",
        ])
        .await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        stdout(&refused).contains("rejected"),
        "{}",
        stdout(&refused)
    );
}

#[tokio::test]
async fn a_durable_transfer_request_runs_after_a_command_service_restart() {
    let mut app = TestApp::spawn().await;
    open(&app, "dur-a", "EUR", 500).await;
    open(&app, "dur-b", "EUR", 0).await;
    // Published while no command-service runs: kept in TALLY_COMMANDS until one does, while
    // the CLI waits for the result and then for the outcome.
    app.stop_command_service().await;
    let id = Uuid::now_v7().to_string();
    let sent = tokio::process::Command::new(tests::binaries::workspace_binary("tally"))
        .arg(format!("--nats-url={}", app.servers.nats_url))
        .arg(format!("--subject-prefix={}", app.subjects.prefix()))
        .arg(format!("--api-url={}", app.http_base))
        .arg("--timeout-ms=20000")
        .env("TALLY_TOKEN", tests::app::admin_token())
        .args([
            "transfer",
            "send",
            "--durable",
            "--from",
            "dur-a",
            "--to",
            "dur-b",
            "--amount",
            "125",
            "--transfer-id",
            &id,
        ])
        .kill_on_drop(true)
        .output();
    let sent = tokio::spawn(sent);
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    app.start_command_service(&[]).await;
    let sent = sent.await.unwrap().unwrap();
    assert_eq!(sent.status.code(), Some(0), "{sent:?}");
    assert!(
        stdout(&sent).contains(&format!("{id} completed")),
        "{}",
        stdout(&sent)
    );
}
