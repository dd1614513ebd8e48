//! `tally audit verify` over the double-entry ledger: a store with multi-leg transactions
//! (fees, an exchange, an overdraft) and holds (captured in part, voided) balances per
//! currency, system accounts included; rows forged directly in `events`, even with their hash
//! links recomputed, are found by the checks across aggregates.

use audit::verify::{VerifyOptions, VerifyReport, verify};
use domain::hash_chain::{ChainHash, ChainedEvent, event_hash};
use domain::ledger::HoldStatus;
use serde_json::{Value, json};
use tests::TestApp;
use tests::client::accepted;
use uuid::Uuid;

use super::{findings, verify_json};

const TX: Uuid = Uuid::from_u128(0x7a11_0001);
const CAPTURED: Uuid = Uuid::from_u128(0x7a11_0002);
const VOIDED: Uuid = Uuid::from_u128(0x7a11_0003);
const OVERDRAWN: Uuid = Uuid::from_u128(0x7a11_0004);

async fn send_ok(app: &TestApp, command: &str, body: Value) {
    let reply = app.send(command, body.clone()).await;
    let _ = accepted(&reply);
}

/// l-a 1,000 EUR, l-b 10 EUR, l-u USD; then a four-legged transaction, a hold captured in
/// part, a hold voided, and l-b into its overdraft.
async fn ledger_store(app: &TestApp) {
    for (id, currency, deposit) in [("l-a", "EUR", 1_000), ("l-b", "EUR", 10), ("l-u", "USD", 0)] {
        send_ok(
            app,
            "account.open",
            json!({"account_id": id, "owner": "auditor", "currency": currency}),
        )
        .await;
        if deposit > 0 {
            send_ok(
                app,
                "account.deposit",
                json!({"account_id": id, "amount": deposit}),
            )
            .await;
        }
    }
    let leg = |from: &str, to: &str, amount: i64, currency: &str| json!({"from": from, "to": to, "amount": amount, "currency": currency});
    send_ok(
        app,
        "transaction.post",
        json!({"transaction_id": TX, "reference": "split", "metadata": {"order": "42"}, "legs": [
            leg("l-a", "l-b", 100, "EUR"),
            leg("l-a", "@fees:EUR", 1, "EUR"),
            leg("l-a", "@exchange:EUR", 50, "EUR"),
            leg("@exchange:USD", "l-u", 54, "USD"),
        ]}),
    )
    .await;
    for (hold_id, amount) in [(CAPTURED, 300), (VOIDED, 5)] {
        send_ok(
            app,
            "hold.place",
            json!({"hold_id": hold_id, "account_id": "l-a", "amount": amount}),
        )
        .await;
    }
    send_ok(
        app,
        "hold.capture",
        json!({"hold_id": CAPTURED, "amount": 120, "to": "l-b"}),
    )
    .await;
    send_ok(app, "hold.void", json!({"hold_id": VOIDED})).await;
    send_ok(
        app,
        "account.set_limits",
        json!({"account_id": "l-b", "overdraft_limit": 100, "reason": "credit line"}),
    )
    .await;
    // l-b holds 230; 300 out leaves it at -70, within its overdraft.
    send_ok(
        app,
        "transaction.post",
        json!({"transaction_id": OVERDRAWN, "legs": [leg("l-b", "@world:EUR", 300, "EUR")]}),
    )
    .await;
}

async fn verify_store(app: &TestApp) -> VerifyReport {
    let options = VerifyOptions {
        findings_max: 100,
        ..VerifyOptions::default()
    };
    verify(&app.db, &options, |_| {}).await.unwrap()
}

#[tokio::test]
async fn verify_balances_the_books_then_finds_forged_rows_with_their_links_recomputed() {
    let app = TestApp::spawn().await;
    ledger_store(&app).await;

    let report = verify_store(&app).await;
    let found: Vec<String> = report.findings.iter().map(ToString::to_string).collect();
    assert_eq!(found, Vec::<String>::new());
    let eur = report
        .currencies
        .iter()
        .find(|c| c.currency == "EUR")
        .unwrap();
    // Clients: 1,010 deposited, 1 fee, 50 exchanged, 300 to the world.
    assert_eq!((eur.clients, eur.sum), (659, 0), "{eur}");
    assert_eq!(eur.system["@world:EUR"], -1_010 + 300);
    assert_eq!(eur.system["@fees:EUR"], 1);
    assert_eq!(eur.system["@exchange:EUR"], 50);
    let usd = report
        .currencies
        .iter()
        .find(|c| c.currency == "USD")
        .unwrap();
    assert_eq!((usd.clients, usd.sum), (54, 0), "{usd}");
    assert_eq!(usd.system["@exchange:USD"], -54);

    // The read models agree once they have caught up (held and limits included).
    let mut report = Value::Null;
    for _ in 0..50 {
        let (code, now) = verify_json(&app, &[]).await;
        report = now;
        if report["read_models_behind"] == 0 {
            assert_eq!(code, Some(0), "{report}");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(report["read_models_compared"], 3, "{report}");
    assert_eq!(report["findings_total"], 0, "{report}");

    // The one-aggregate folds see the new types: state as of any version.
    let at = audit::history::StatePoint::Version;
    let captured = hold_at(&app, CAPTURED, 2).await;
    assert_eq!(
        (captured.status, captured.amount, captured.captured),
        (HoldStatus::Captured, 300, 120)
    );
    assert_eq!(hold_at(&app, VOIDED, 1).await.status, HoldStatus::Held);
    assert_eq!(hold_at(&app, VOIDED, 2).await.status, HoldStatus::Voided);
    let posted = audit::history::transaction_state(&app.db, &TX.to_string(), at(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (posted.state.legs.len(), posted.state.reference.as_str()),
        (4, "split")
    );

    // A credit of 7 on l-b from l-a that l-a never gave, and a second release of a hold that
    // ended, each with a consistent balance and its hash link recomputed as a writer would.
    let forged = Uuid::from_u128(0xf0f0);
    let b_balance = -70 + 7;
    forge(
        &app,
        "l-b",
        "LegsPosted",
        json!({"LegsPosted": {"transaction_id": forged, "legs": [{"leg": 0, "counterparty": "l-a", "amount": 7}], "balance_after": b_balance}}),
    )
    .await;
    let a_release = forge(
        &app,
        "l-a",
        "FundsReleased",
        json!({"FundsReleased": {"hold_id": VOIDED, "amount": 5, "end": "voided"}}),
    )
    .await;

    let (code, report) = verify_json(&app, &[]).await;
    assert_eq!(code, Some(1), "{report}");
    let kinds = findings(&report);
    assert!(
        kinds.iter().all(|(kind, ..)| kind != "broken_link"),
        "the links were recomputed: {kinds:?}"
    );
    assert!(
        kinds.contains(&("inconsistent".into(), "l-a".into(), a_release)),
        "{report}"
    );
    let all = report["findings"].as_array().unwrap();
    let has = |wanted: Value| {
        all.iter()
            .any(|f| wanted.as_object().unwrap().iter().all(|(k, v)| &f[k] == v))
    };
    assert!(
        has(json!({"kind": "currency_imbalance", "currency": "EUR", "sum": 7})),
        "{report}"
    );
    assert!(
        has(json!({"kind": "transaction_imbalance", "transaction_id": forged.to_string()})),
        "{report}"
    );
    assert!(
        has(
            json!({"kind": "hold_mismatch", "hold_id": VOIDED.to_string(), "reason": "released 2 times"})
        ),
        "{report}"
    );
}

async fn hold_at(app: &TestApp, id: Uuid, version: i64) -> domain::ledger::Hold {
    let point = audit::history::StatePoint::Version(version);
    audit::history::hold_state(&app.db, &id.to_string(), point)
        .await
        .unwrap()
        .unwrap()
        .state
}

/// Appends an event to `account`'s history directly in `events`, chained to the stored head;
/// returns its sequence.
async fn forge(app: &TestApp, account: &str, event_type: &str, payload: Value) -> i64 {
    let (sequence, hash): (i64, Vec<u8>) = sqlx::query_as(
        "SELECT sequence, hash FROM events WHERE aggregate_type = 'account' AND aggregate_id = $1
         ORDER BY sequence DESC LIMIT 1",
    )
    .bind(account)
    .fetch_one(&app.db)
    .await
    .unwrap();
    let prev = ChainHash::try_from(hash.as_slice()).unwrap();
    let sequence = sequence + 1;
    let metadata = json!({"actor": "forger"});
    let chained = ChainedEvent {
        aggregate_type: "account",
        aggregate_id: account,
        sequence: u64::try_from(sequence).unwrap(),
        event_type,
        event_version: "1.0",
        payload: &payload,
        metadata: &metadata,
    };
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, hash)
         VALUES ('account', $1, $2, $3, '1.0', $4, $5, $6)",
    )
    .bind(account)
    .bind(sequence)
    .bind(event_type)
    .bind(&payload)
    .bind(&metadata)
    .bind(event_hash(&prev, &chained).to_vec())
    .execute(&app.db)
    .await
    .unwrap();
    sequence
}

/// History and export cover the new aggregate types over HTTP.
#[tokio::test]
async fn history_and_export_of_transactions_and_holds() {
    let app = TestApp::spawn().await;
    ledger_store(&app).await;
    let page: Value = app
        .http_get(&format!("/v1/audit/hold/{CAPTURED}/events"))
        .await
        .json()
        .await
        .unwrap();
    let types: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["HoldPlaced", "HoldCaptured"], "{page}");
    let export = app
        .http
        .get(format!(
            "{}/v1/audit/transaction/{TX}/events",
            app.http_base
        ))
        .header("Accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), 200);
    let text = export.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(
        lines[0]["payload"]["TransactionPosted"]["legs"][3]["to"],
        "l-u"
    );
    let account: Value = app
        .http_get("/v1/audit/account/l-a/events?limit=500")
        .await
        .json()
        .await
        .unwrap();
    let types: Vec<&str> = account["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "AccountOpened",
            "MoneyDeposited",
            "LegsPosted",
            "FundsHeld",
            "FundsHeld",
            // The capture: released first, then posted.
            "FundsReleased",
            "LegsPosted",
            "FundsReleased"
        ]
    );
}

/// The audit of transactions and holds spans owners: an owner's own token with `audit:read`
/// may not read it, nor a token without that scope, nor no token.
#[tokio::test]
async fn transaction_and_hold_history_is_for_auditors_only() {
    use platform::auth::Scope;
    let app = TestApp::spawn().await;
    ledger_store(&app).await;
    let owners_auditor = tests::app::mint_token("owner", &[Scope::AuditRead], Some("auditor"));
    let reader = tests::app::mint_token("reader", &[Scope::AccountsRead], None);
    let auditor = tests::app::mint_token("auditor", &[Scope::AuditRead], None);
    for path in [
        format!("/v1/audit/hold/{CAPTURED}/events"),
        format!("/v1/audit/transaction/{TX}/events"),
        format!("/v1/audit/hold/{CAPTURED}/state?version=1"),
    ] {
        let url = format!("{}{path}", app.http_base);
        // A client of its own: `app.http` sends the admin token by default.
        let client = reqwest::Client::new();
        let status = |token: Option<String>| {
            let mut request = client.get(&url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            async move { request.send().await.unwrap().status().as_u16() }
        };
        assert_eq!(status(None).await, 401, "{path}");
        assert_eq!(status(Some(owners_auditor.clone())).await, 403, "{path}");
        assert_eq!(status(Some(reader.clone())).await, 403, "{path}");
        if path.ends_with("/events") {
            assert_eq!(status(Some(auditor.clone())).await, 200, "{path}");
        }
    }
}
