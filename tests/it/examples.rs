//! The clients in `examples/` (Python with nats-py, TypeScript with nats.js) run as a user runs
//! them: as child processes, against the real stack with `deploy/nats-server.conf`'s users (they
//! log in as `tally-client` with its inbox prefix) and an owner-bound token. Each must exit 0,
//! and the store must then hold each deposit exactly once: the retry with the same command id
//! did not move money twice.
//!
//! They need `scripts/dev/examples.sh` run first (`./dev test` does): its virtualenv and the
//! TypeScript build. Without them these tests fail, saying so; they never skip.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use domain::CommandReply;
use platform::auth::Scope;
use serde_json::{Value, json};
use tests::app::mint_token;
use tests::binaries::repo_root;

use crate::security::Secured;

/// What the examples deposit: 10.50 (with a retry), then 2.50 while following the feed.
const DEPOSITS: [i64; 2] = [1050, 250];
/// Every wait of an example is bounded by 15 s; the whole run by this.
const RUN_LIMIT: Duration = Duration::from_secs(90);
const SETUP: &str = "run scripts/dev/examples.sh (./dev test does)";

#[derive(Debug, Clone, Copy)]
enum Language {
    Python,
    TypeScript,
}

impl Language {
    /// The program and its arguments, or a failure naming the command that installs them.
    fn command(&self) -> tokio::process::Command {
        let examples = repo_root().join("examples");
        let (program, script) = match self {
            Language::Python => {
                let python = std::env::var_os("TALLY_EXAMPLES_PYTHON")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| repo_root().join(".dev/examples-venv/bin/python"));
                assert!(
                    python.exists(),
                    "no Python for the examples at {}: {SETUP}",
                    python.display()
                );
                (python, examples.join("python/tally_example.py"))
            }
            Language::TypeScript => {
                let built = examples.join("typescript/dist/example.js");
                assert!(
                    built.exists() && examples.join("typescript/node_modules/nats").exists(),
                    "examples/typescript is not installed and built: {SETUP}"
                );
                (PathBuf::from("node"), built)
            }
        };
        let mut command = tokio::process::Command::new(program);
        command.arg(script);
        command
    }
}

/// Runs the example in `language` against `stack`, as `owner`'s client opening `account`.
async fn run_example(
    stack: &Secured,
    language: Language,
    token: &str,
    account: &str,
    owner: &str,
) -> Output {
    run_example_on(stack, &stack.app.http_base, language, token, account, owner).await
}

/// [`run_example`] reading from the query-service at `api_url`.
async fn run_example_on(
    stack: &Secured,
    api_url: &str,
    language: Language,
    token: &str,
    account: &str,
    owner: &str,
) -> Output {
    let mut command = language.command();
    // Nothing from the environment of whoever runs the tests may point the example elsewhere.
    for var in [
        "TALLY_NATS_INBOX_PREFIX",
        "TALLY_DEV_STATE",
        "TALLY_EXAMPLE_CURRENCY",
    ] {
        command.env_remove(var);
    }
    command
        .env("TALLY_NATS_URL", &stack.access.url)
        .env("TALLY_NATS_USER", "tally-client")
        .env("TALLY_NATS_PASSWORD", stack.access.password("tally-client"))
        .env("TALLY_SUBJECT_PREFIX", stack.app.subjects.prefix())
        .env("TALLY_TOKEN", token)
        .env("TALLY_API_URL", api_url)
        .env("TALLY_EXAMPLE_ACCOUNT", account)
        .env("TALLY_EXAMPLE_OWNER", owner)
        .env("TALLY_EXAMPLE_TIMEOUT_S", "15")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_LIMIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("the example ran longer than {RUN_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("cannot start the example ({SETUP}): {e}"));
    eprintln!(
        "--- example stdout\n{}--- example stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A token for `owner`'s own client: it may open and move only that owner's accounts.
fn owner_token(owner: &str) -> String {
    mint_token(
        owner,
        &[Scope::AccountsWrite, Scope::AccountsRead],
        Some(owner),
    )
}

/// The amounts deposited into `account`, in the store, in order.
async fn deposits_in_store(stack: &Secured, account: &str) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT (payload->'MoneyDeposited'->>'amount')::bigint FROM events
          WHERE aggregate_type = 'account' AND aggregate_id = $1
            AND event_type = 'MoneyDeposited' ORDER BY sequence",
    )
    .bind(account)
    .fetch_all(&stack.app.db)
    .await
    .unwrap()
}

/// The account as the read model has it (as an admin reads it).
async fn account_in_read_model(stack: &Secured, account: &str) -> (u16, Value) {
    let response = stack.app.http_get(&format!("/v1/accounts/{account}")).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn the_example_deposits_once_and_follows_the_feed(language: Language, account: &str) {
    let stack = Secured::start().await;
    let output = run_example(&stack, language, &owner_token("alice"), account, "alice").await;
    let stdout = assert_succeeded(&output);
    assert!(
        stdout.contains("the very same reply"),
        "no safe retry shown"
    );
    assert!(stdout.contains("event change"), "no change event printed");
    assert_deposited_once(&stack, account).await;
}

fn assert_succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "the example failed ({}): see its output above",
        output.status
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The account holds each of [`DEPOSITS`] once, in the store and in the read model.
async fn assert_deposited_once(stack: &Secured, account: &str) {
    // Once each, although the first deposit was sent three times.
    assert_eq!(deposits_in_store(stack, account).await, DEPOSITS);
    let (status, read) = account_in_read_model(stack, account).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["balance"], DEPOSITS.iter().sum::<i64>(), "{read}");
    assert_eq!(read["owner"], "alice");
    assert_eq!(read["version"], 3, "opened, then two deposits: {read}");
}

#[tokio::test]
async fn the_python_example_deposits_once_and_follows_the_feed() {
    the_example_deposits_once_and_follows_the_feed(Language::Python, "ex-python").await;
}

#[tokio::test]
async fn the_typescript_example_deposits_once_and_follows_the_feed() {
    the_example_deposits_once_and_follows_the_feed(Language::TypeScript, "ex-typescript").await;
}

/// A feed the server ends (`event: end`, `max_age`) is resumed where it stopped: here every
/// stream ends right after catching up, so the change arrives on a later connection.
#[tokio::test]
async fn the_examples_resume_the_feed_when_the_server_ends_it() {
    let stack = Secured::start().await;
    let mut query = stack
        .app
        .start_binary("query-service", &["--feed-max-age-ms=1"]);
    query.wait_ready(Duration::from_secs(60)).await;
    for (language, account) in [
        (Language::Python, "ex-py-resume"),
        (Language::TypeScript, "ex-ts-resume"),
    ] {
        let token = owner_token("alice");
        let api = query.base_url();
        let output = run_example_on(&stack, &api, language, &token, account, "alice").await;
        let stdout = assert_succeeded(&output);
        assert!(
            stdout.contains("ended (max_age): reconnecting"),
            "{language:?}: no reconnection shown"
        );
        assert_deposited_once(&stack, account).await;
    }
}

/// Pointed at another owner's account, each example stops at the first step with the refusal
/// and moves nothing: its token is bound to its owner.
#[tokio::test]
async fn an_example_cannot_touch_another_owners_account() {
    let stack = Secured::start().await;
    let opened = stack
        .app
        .send(
            "account.open",
            json!({"account_id": "bobs", "owner": "bob", "currency": "EUR"}),
        )
        .await;
    tests::client::accepted(&opened);
    let CommandReply::Accepted {
        consistency_token, ..
    } = &opened
    else {
        unreachable!("accepted above")
    };
    for language in [Language::Python, Language::TypeScript] {
        let token = owner_token("alice");
        // As alice's client claiming bob as the owner, then as alice on bob's account id.
        for owner in ["bob", "alice"] {
            let output = run_example(&stack, language, &token, "bobs", owner).await;
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{stderr}");
            assert!(
                stderr.contains("account.open rejected"),
                "no clear refusal: {stderr}"
            );
        }
    }
    assert!(deposits_in_store(&stack, "bobs").await.is_empty());
    let response = stack
        .app
        .http_get_with_token("/v1/accounts/bobs", consistency_token)
        .await;
    assert_eq!(response.status(), 200);
    let read: Value = response.json().await.unwrap();
    assert_eq!(
        (read["balance"].clone(), read["owner"].clone()),
        (json!(0), json!("bob"))
    );
}
