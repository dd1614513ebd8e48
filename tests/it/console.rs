//! The operator console (`/console`) in a real headless Chromium, against the whole stack:
//! sign in, find and open an account, watch a deposit sent over NATS arrive without a reload,
//! read its audit history and verify it, be refused another owner's account, and read the
//! operations page. Screenshots of the account and operations pages land in
//! `target/screenshots/` (and in `docs/images/` with `TALLY_UPDATE_SCREENSHOTS=1`).

use std::path::PathBuf;
use std::time::Duration;

use domain::CommandReply;
use platform::auth::Scope;
use serde_json::{Value, json};
use tests::TestApp;
use tests::app::{admin_token, mint_token};
use tests::binaries::repo_root;
use tests::browser::Browser;
use tests::client::accepted;

/// How long the page may take to show what it was asked for (API reads, the live feed).
const WAIT: Duration = Duration::from_secs(15);
/// The first page load also starts Chromium's renderer and compiles the console's script.
const FIRST_LOAD: Duration = Duration::from_secs(30);

/// Where a screenshot goes: always `target/screenshots/<name>`, and `docs/images/<name>` too
/// when `TALLY_UPDATE_SCREENSHOTS=1` (how the README's images are refreshed).
fn screenshot_paths(name: &str) -> Vec<PathBuf> {
    let root = repo_root();
    let mut paths = vec![root.join("target/screenshots").join(name)];
    if std::env::var("TALLY_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        paths.push(root.join("docs/images").join(name));
    }
    paths
}

async fn browser() -> Browser {
    Browser::start()
        .await
        .unwrap_or_else(|e| panic!("the console's tests need a browser: {e}"))
}

fn consistency_token(reply: &CommandReply) -> String {
    match reply {
        CommandReply::Accepted {
            consistency_token, ..
        } => consistency_token.clone(),
        other => panic!("not accepted: {other:?}"),
    }
}

/// Opens `account_id` for `owner` with `balance` deposited (command id `deposit_id`), and
/// waits until the read model shows it.
async fn account_with(app: &TestApp, account_id: &str, owner: &str, balance: i64) -> uuid::Uuid {
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": account_id, "owner": owner, "currency": "EUR"}),
        )
        .await,
    );
    let deposit_id = uuid::Uuid::new_v4();
    let reply = app
        .send_with_id(
            "account.deposit",
            deposit_id,
            json!({"account_id": account_id, "amount": balance}),
        )
        .await;
    let read = app
        .http_get_with_token(
            &format!("/v1/accounts/{account_id}"),
            &consistency_token(&reply),
        )
        .await;
    assert_eq!(read.status(), 200, "the read model shows {account_id}");
    deposit_id
}

/// Signs in on the console with `token` and waits until it shows `subject` and the accounts
/// route.
async fn sign_in(browser: &Browser, app: &TestApp, token: &str, subject: &str) {
    browser
        .goto(&format!("{}/console#/signin", app.http_base))
        .await
        .unwrap();
    let field = browser.wait_for("input#token", FIRST_LOAD).await.unwrap();
    field.send_keys(token).await.unwrap();
    browser
        .wait_for("button#sign-in", WAIT)
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let whoami = format!("#whoami shows {subject}");
    browser
        .wait_js(
            &whoami,
            WAIT,
            "const e = document.querySelector('#whoami'); return e ? e.textContent : null;",
            |v| v.as_str().is_some_and(|t| t.contains(subject)),
        )
        .await
        .unwrap();
    browser
        .wait_js(
            "the accounts route after sign-in",
            WAIT,
            "return location.hash;",
            |v| v == "#/accounts",
        )
        .await
        .unwrap();
}

/// The `data-value` of the element `css`, once it equals `expected`.
async fn wait_value(browser: &Browser, css: &str, expected: i64) {
    let script = format!(
        "const e = document.querySelector({}); return e ? e.dataset.value : null;",
        json!(css)
    );
    let expected = expected.to_string();
    browser
        .wait_js(
            &format!("{css}[data-value={expected}]"),
            WAIT,
            &script,
            |v| v.as_str() == Some(expected.as_str()),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn an_account_page_updates_live_and_verifies_its_history() {
    let app = TestApp::spawn().await;
    let first_deposit = account_with(&app, "console-acc", "console-owner", 1_500).await;
    // Another account of the same owner: the search lists both, the test picks one.
    account_with(&app, "console-other", "console-owner", 42).await;
    let token = mint_token(
        "console-reader",
        &[Scope::AccountsRead, Scope::AuditRead],
        None,
    );
    let browser = browser().await;
    sign_in(&browser, &app, &token, "console-reader").await;

    browser
        .wait_for("input#search", WAIT)
        .await
        .unwrap()
        .send_keys("console-owner")
        .await
        .unwrap();
    browser
        .wait_for("button#search-go", WAIT)
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for(r#"a.account-link[data-account-id="console-acc"]"#, WAIT)
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for(r#"#account[data-account-id="console-acc"]"#, WAIT)
        .await
        .unwrap();
    wait_value(&browser, "#balance", 1_500).await;
    wait_value(&browser, "#available", 1_500).await;
    wait_value(&browser, "#held", 0).await;
    browser.wait_for("svg#balance-chart", WAIT).await.unwrap();
    browser
        .wait_for("table#entries tbody tr[data-sequence]", WAIT)
        .await
        .unwrap();

    live_deposit_arrives_without_reload(&app, &browser).await;
    browser
        .screenshot(&screenshot_paths("console-account.png"))
        .await
        .unwrap();
    history_shows_the_command_and_verifies(&browser, first_deposit).await;
    browser.close().await.unwrap();
}

/// With the feed live, a deposit over NATS changes the figures and logs the change, while a
/// marker set on the page before survives (no reload happened).
async fn live_deposit_arrives_without_reload(app: &TestApp, browser: &Browser) {
    browser
        .wait_js(
            "#feed-status live",
            WAIT,
            "const e = document.querySelector('#feed-status'); return e ? e.textContent.trim() : null;",
            |v| v == "live",
        )
        .await
        .unwrap();
    let logged_before = browser.count("ul#feed-log li").await.unwrap();
    browser
        .eval("window.__tallyNoReload = 'still here'; return null;")
        .await
        .unwrap();

    accepted(
        &app.send(
            "account.deposit",
            json!({"account_id": "console-acc", "amount": 250}),
        )
        .await,
    );
    wait_value(browser, "#balance", 1_750).await;
    wait_value(browser, "#available", 1_750).await;
    browser
        .wait_js(
            "a new #feed-log entry",
            WAIT,
            "return document.querySelectorAll('ul#feed-log li').length;",
            |v| v.as_u64().is_some_and(|n| n > logged_before as u64),
        )
        .await
        .unwrap();
    let marker = browser
        .eval("return window.__tallyNoReload || null;")
        .await
        .unwrap();
    assert_eq!(marker, json!("still here"), "the page reloaded");
}

/// The audit history lists the deposit made before the page opened (by its command id), and
/// verify reports the account's chain intact.
async fn history_shows_the_command_and_verifies(browser: &Browser, deposit: uuid::Uuid) {
    browser
        .wait_for("table#history tbody tr[data-sequence]", WAIT)
        .await
        .unwrap();
    let script = format!(
        "return Array.from(document.querySelectorAll('table#history tbody tr[data-sequence]')).some(r => r.outerHTML.includes({}));",
        json!(deposit.to_string())
    );
    browser
        .wait_js(
            &format!("a history row with command id {deposit}"),
            WAIT,
            &script,
            |v| v == &Value::Bool(true),
        )
        .await
        .unwrap();
    browser
        .wait_for("button#verify", WAIT)
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let verdict = browser
        .wait_js(
            "#verify-result[data-ok]",
            WAIT,
            "const e = document.querySelector('#verify-result'); return e ? (e.dataset.ok ?? null) : null;",
            |v| v.is_string(),
        )
        .await
        .unwrap();
    assert_eq!(verdict, json!("true"), "verify on an untouched account");
}

#[tokio::test]
async fn an_owner_bound_token_is_refused_another_owners_account() {
    let app = TestApp::spawn().await;
    account_with(&app, "alice-acc", "alice", 1_200).await;
    // A figure that appears nowhere else on the page, raw or formatted.
    account_with(&app, "bob-acc", "bob", 987_654).await;
    let token = mint_token("alice-console", &[Scope::AccountsRead], Some("alice"));
    let browser = browser().await;
    sign_in(&browser, &app, &token, "alice-console").await;

    // Her own account opens; without audit:read the history says it is unavailable.
    browser
        .goto(&format!("{}/console#/accounts/alice-acc", app.http_base))
        .await
        .unwrap();
    browser
        .wait_for(r#"#account[data-account-id="alice-acc"]"#, WAIT)
        .await
        .unwrap();
    wait_value(&browser, "#balance", 1_200).await;
    browser
        .wait_for("#history-unavailable", WAIT)
        .await
        .unwrap();

    browser
        .goto(&format!("{}/console#/accounts/bob-acc", app.http_base))
        .await
        .unwrap();
    browser
        .wait_js(
            "#error shown for another owner's account",
            WAIT,
            "const e = document.querySelector('#error'); return e && e.checkVisibility() ? e.textContent : null;",
            |v| v.as_str().is_some_and(|t| !t.trim().is_empty()),
        )
        .await
        .unwrap();
    assert_eq!(
        browser.count("#account").await.unwrap(),
        0,
        "an #account for bob's account"
    );
    let source = browser.source().await.unwrap();
    for figure in ["987654", "9,876.54", "9876.54", "9 876.54"] {
        assert!(
            !source.contains(figure),
            "bob's balance {figure} is on alice's page"
        );
    }
    browser.close().await.unwrap();
}

#[tokio::test]
async fn the_ops_page_lists_the_projections() {
    let app = TestApp::spawn().await;
    account_with(&app, "ops-acc", "ops-owner", 100).await;
    let browser = browser().await;
    let token = admin_token();
    sign_in(&browser, &app, &token, "test-admin").await;
    browser
        .wait_for("a#nav-ops", WAIT)
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_js("the ops route", WAIT, "return location.hash;", |v| {
            v == "#/ops"
        })
        .await
        .unwrap();
    browser
        .wait_for(
            r#"table#projections tbody tr[data-projection="accounts"]"#,
            WAIT,
        )
        .await
        .unwrap();
    browser.wait_for("svg#lag-chart", WAIT).await.unwrap();
    browser.wait_for("table#dead-letters", WAIT).await.unwrap();
    browser.wait_for("#digest", WAIT).await.unwrap();
    browser
        .screenshot(&screenshot_paths("console-ops.png"))
        .await
        .unwrap();
    signing_out_forgets_the_token(&browser, &token).await;
    browser.close().await.unwrap();
}

/// Sign out goes back to the sign-in page and leaves the token nowhere in session storage.
async fn signing_out_forgets_the_token(browser: &Browser, token: &str) {
    let kept = format!(
        "return Object.keys(sessionStorage).some(k => (sessionStorage.getItem(k) || '').includes({}));",
        json!(token)
    );
    assert_eq!(
        browser.eval(&kept).await.unwrap(),
        json!(true),
        "the token is kept while signed in"
    );
    browser
        .wait_for("button#sign-out", WAIT)
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_js(
            "the sign-in route after sign-out",
            WAIT,
            "return location.hash;",
            |v| v == "#/signin",
        )
        .await
        .unwrap();
    browser.wait_for("input#token", WAIT).await.unwrap();
    assert_eq!(
        browser.eval(&kept).await.unwrap(),
        json!(false),
        "the token outlived sign-out"
    );
}
