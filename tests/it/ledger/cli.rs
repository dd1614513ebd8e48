//! The `tally` binary's ledger commands against a test's stack: transaction, hold, limits,
//! batch, and the reads of what they wrote.

use std::time::Duration;

use serde_json::{Value, json};
use tests::TestApp;
use tests::tally_cli::stdout;
use uuid::Uuid;

use super::{Books, open};

fn status(output: &std::process::Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

#[tokio::test]
async fn ledger_commands_and_reads_from_the_command_line() {
    let app = TestApp::spawn().await;
    open(&app, "cli-payer", "o", "EUR", 10_000).await;
    open(&app, "cli-shop", "o", "EUR", 0).await;

    let tx = Uuid::now_v7().to_string();
    let posted = app
        .tally(&[
            "--json",
            "transaction",
            "post",
            "--id",
            &tx,
            "--leg",
            "cli-payer:cli-shop:1000:EUR",
            "--leg",
            "cli-shop:@fees:EUR:30:EUR",
            "--metadata",
            "order=7",
        ])
        .await;
    assert_eq!(status(&posted), 0, "{posted:?}");
    let reply: Value = serde_json::from_str(stdout(&posted).trim()).unwrap();
    assert_eq!(reply["aggregate_id"], tx.as_str());
    let token = reply["consistency_token"].as_str().unwrap().to_owned();
    let bad_leg = app
        .tally(&["transaction", "post", "--leg", "cli-payer:cli-shop:ten:EUR"])
        .await;
    assert_eq!(status(&bad_leg), 2, "{bad_leg:?}");

    let hold = Uuid::now_v7().to_string();
    let place = app
        .tally(&[
            "hold",
            "place",
            "--hold-id",
            &hold,
            "--account",
            "cli-payer",
            "--amount",
            "500",
        ])
        .await;
    assert_eq!(status(&place), 0, "{place:?}");
    let capture = app
        .tally(&[
            "hold",
            "capture",
            "--hold-id",
            &hold,
            "--amount",
            "200",
            "--to",
            "cli-shop",
        ])
        .await;
    assert_eq!(status(&capture), 0, "{capture:?}");
    let void = app.tally(&["hold", "void", "--hold-id", &hold]).await;
    assert_eq!(status(&void), 1, "{void:?}");
    assert!(stdout(&void).contains("hold_ended"), "{}", stdout(&void));

    let limits = app
        .tally(&[
            "account",
            "set-limits",
            "--id",
            "cli-shop",
            "--overdraft-limit",
            "100",
            "--max-balance",
            "5000",
            "--reason",
            "pilot",
        ])
        .await;
    assert_eq!(status(&limits), 0, "{limits:?}");

    let books = Books::read(&app).await;
    books.assert_balanced();
    assert_eq!(books.balance("cli-payer"), 10_000 - 1_000 - 200);
    assert_eq!(books.balance("cli-shop"), 1_000 - 30 + 200);
    assert_eq!(books.accounts["cli-shop"].1.max_balance, Some(5_000));

    // A batch from a file: one by one, then all or nothing with one bad command.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("batch.json");
    let deposit = |amount: i64| json!({"command": "account.deposit", "body": {"account_id": "cli-payer", "amount": amount}});
    std::fs::write(
        &file,
        json!([deposit(1), deposit(2), deposit(3)]).to_string(),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let batch = app.tally(&["batch", "submit", "--file", path]).await;
    assert_eq!(status(&batch), 0, "{batch:?}");
    assert!(
        stdout(&batch).contains("3 of 3 accepted"),
        "{}",
        stdout(&batch)
    );
    std::fs::write(
        &file,
        json!({"commands": [deposit(1), deposit(0)]}).to_string(),
    )
    .unwrap();
    let atomic = app
        .tally(&["batch", "submit", "--file", path, "--atomic"])
        .await;
    assert_eq!(status(&atomic), 1, "{atomic:?}");
    let out = stdout(&atomic);
    assert!(
        out.contains("conflict") && out.contains("amount_out_of_range"),
        "{out}"
    );
    assert_eq!(Books::read(&app).await.balance("cli-payer"), 8_800 + 6);

    // The reads of what was written.
    let read = app
        .tally(&["read", "transaction", &tx, "--after", &token])
        .await;
    assert_eq!(status(&read), 0, "{read:?}");
    assert!(stdout(&read).contains("@fees:EUR"), "{}", stdout(&read));
    let holds = wait_for(
        &app,
        &["read", "holds", "cli-payer"],
        &format!("{hold} captured"),
    )
    .await;
    assert!(holds.contains(" 500 EUR"), "{holds}");
    let from = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let to = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let statement = wait_for(
        &app,
        &[
            "read",
            "statement",
            "cli-payer",
            "--from",
            &from,
            "--to",
            &to,
        ],
        "closing balance",
    )
    .await;
    assert!(statement.contains("opening balance"), "{statement}");
    let system = wait_for(&app, &["read", "system-accounts"], "@fees:EUR").await;
    assert!(system.contains("@world:EUR"), "{system}");
}

/// Runs `tally <args>` until its output contains `wanted` (the read models catch up in their
/// own time), at most 10 s; the last output.
async fn wait_for(app: &TestApp, args: &[&str], wanted: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let output = app.tally(args).await;
        let out = stdout(&output);
        if status(&output) == 0 && out.contains(wanted) {
            return out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`tally {}` never showed {wanted}: {output:?}",
            args.join(" ")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
