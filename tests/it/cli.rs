//! The `tally` binary, run the way a person runs it, against real services.

use std::process::Output;

use domain::CommandReply;
use tests::TestApp;
use tests::binaries::workspace_binary;
use tests::tally_cli::stdout;

async fn tally(app: &TestApp, args: &[&str]) -> Output {
    app.tally(args).await
}

#[tokio::test]
async fn account_commands_by_hand() {
    let app = TestApp::spawn().await;
    let open = tally(
        &app,
        &[
            "account",
            "open",
            "--id",
            "cli-1",
            "--owner",
            "alice",
            "--currency",
            "EUR",
        ],
    )
    .await;
    assert_eq!(open.status.code(), Some(0), "{open:?}");
    assert!(
        stdout(&open).contains("accepted: cli-1 is at version 1"),
        "{}",
        stdout(&open)
    );

    let deposit = tally(
        &app,
        &[
            "account",
            "deposit",
            "--id",
            "cli-1",
            "--amount",
            "1050",
            "--reference",
            "salary",
        ],
    )
    .await;
    assert_eq!(deposit.status.code(), Some(0));

    let too_much = tally(
        &app,
        &["account", "withdraw", "--id", "cli-1", "--amount", "5000"],
    )
    .await;
    assert_eq!(too_much.status.code(), Some(1), "a rejection exits 1");
    assert!(
        stdout(&too_much).contains("insufficient_funds"),
        "{}",
        stdout(&too_much)
    );

    let json = tally(
        &app,
        &[
            "--json", "account", "freeze", "--id", "cli-1", "--reason", "review",
        ],
    )
    .await;
    let reply: CommandReply = serde_json::from_slice(&json.stdout).expect("--json prints a reply");
    assert!(matches!(reply, CommandReply::Accepted { version: 3, .. }));

    let durable = tally(&app, &["account", "unfreeze", "--id", "cli-1", "--durable"]).await;
    assert_eq!(durable.status.code(), Some(0), "{durable:?}");
    assert!(
        stdout(&durable).contains("version 4"),
        "{}",
        stdout(&durable)
    );

    // The same command id twice: executed once, same answer.
    let id = uuid::Uuid::new_v4().to_string();
    let first = tally(
        &app,
        &[
            "--json",
            "account",
            "deposit",
            "--id",
            "cli-1",
            "--amount",
            "1",
            "--command-id",
            &id,
        ],
    )
    .await;
    let second = tally(
        &app,
        &[
            "--json",
            "account",
            "deposit",
            "--id",
            "cli-1",
            "--amount",
            "1",
            "--command-id",
            &id,
        ],
    )
    .await;
    assert_eq!(first.stdout, second.stdout);
    assert_eq!(app.events_in_store().await, 5);
}

#[tokio::test]
async fn no_service_is_a_clear_error() {
    let app = TestApp::spawn().await;
    let output = tokio::process::Command::new(workspace_binary("tally"))
        .arg(format!("--nats-url={}", app.servers.nats_url))
        .arg("--subject-prefix=nobody-listens")
        .args(["account", "close", "--id", "x"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no command-service is listening"),
        "{stderr}"
    );
}

#[tokio::test]
async fn show_list_and_entries_over_http() {
    let app = TestApp::spawn().await;
    let api = format!("--api-url={}", app.http_base);
    tally(
        &app,
        &[
            "account",
            "open",
            "--id",
            "r-1",
            "--owner",
            "bob",
            "--currency",
            "EUR",
        ],
    )
    .await;
    let deposit = tally(
        &app,
        &[
            "--json",
            "account",
            "deposit",
            "--id",
            "r-1",
            "--amount",
            "250",
            "--reference",
            "gift",
        ],
    )
    .await;
    let reply: CommandReply = serde_json::from_slice(&deposit.stdout).unwrap();
    let CommandReply::Accepted {
        consistency_token, ..
    } = reply
    else {
        panic!("rejected")
    };

    let show = tally(
        &app,
        &[
            &api,
            "account",
            "show",
            "--id",
            "r-1",
            "--after",
            &consistency_token,
        ],
    )
    .await;
    assert_eq!(show.status.code(), Some(0), "{show:?}");
    let line = stdout(&show);
    assert!(
        line.contains("r-1") && line.contains("250") && line.contains("open"),
        "{line}"
    );

    let list = tally(&app, &[&api, "--json", "account", "list", "--owner", "bob"]).await;
    let page: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(page["items"][0]["account_id"], "r-1");

    let entries = tally(&app, &[&api, "account", "entries", "--id", "r-1"]).await;
    assert!(stdout(&entries).contains("gift"), "{}", stdout(&entries));

    let missing = tally(&app, &[&api, "account", "show", "--id", "nope"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
}
