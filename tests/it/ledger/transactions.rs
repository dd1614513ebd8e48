//! `transaction.post`: a payment with a fee, an exchange, every bad input refused writing
//! nothing, the 64-leg bound, racing transactions conserving money, and the old commands as
//! they were.

use std::sync::Arc;

use domain::{CommandReply, ErrorCode};
use serde_json::{Value, json};
use tests::TestApp;
use tests::client::accepted;
use uuid::Uuid;

use super::{Books, leg, open, post, refused_writing_nothing};

#[tokio::test]
async fn a_payment_with_a_fee_is_one_transaction_and_the_books_balance() {
    let app = TestApp::spawn().await;
    open(&app, "payer", "p", "EUR", 10_000).await;
    open(&app, "merchant", "m", "EUR", 0).await;
    let id = Uuid::now_v7();
    let body = json!({
        "transaction_id": id,
        "legs": [leg("payer", "merchant", 1_000, "EUR"), leg("merchant", "@fees:EUR", 30, "EUR")],
        "reference": "order-7",
        "metadata": {"order": "7"},
    });
    let command_id = Uuid::now_v7();
    let reply = app
        .send_with_id("transaction.post", command_id, body.clone())
        .await;
    let CommandReply::Accepted {
        aggregate_id,
        version,
        consistency_token,
        ..
    } = &reply
    else {
        panic!("refused: {reply:?}");
    };
    assert_eq!(aggregate_id, &id.to_string());
    assert_eq!(*version, 1);
    assert_eq!(consistency_token, &format!("transaction:{id}:1"));

    let books = Books::read(&app).await;
    books.assert_balanced();
    assert_eq!(books.balance("payer"), 9_000);
    assert_eq!(books.balance("merchant"), 970);
    assert_eq!(books.system("@fees:EUR"), 30);
    assert_eq!(books.system("@world:EUR"), -10_000);

    // One database transaction: the transaction's event and one LegsPosted per account.
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT tx_id::text, aggregate_type, aggregate_id, event_type FROM events
         WHERE aggregate_type = 'transaction' OR event_type = 'LegsPosted' ORDER BY global_position",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let mut seen: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|(_, t, a, e)| (t.as_str(), a.as_str(), e.as_str()))
        .collect();
    seen.sort_unstable();
    let id_text = id.to_string();
    assert_eq!(
        seen,
        [
            ("account", "merchant", "LegsPosted"),
            ("account", "payer", "LegsPosted"),
            ("transaction", id_text.as_str(), "TransactionPosted"),
        ]
    );
    assert!(
        rows.iter().all(|r| r.0 == rows[0].0),
        "one transaction: {rows:?}"
    );
    let payload: Value = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_type = 'transaction' AND aggregate_id = $1",
    )
    .bind(&id_text)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(payload["TransactionPosted"]["metadata"]["order"], "7");
    assert_eq!(
        payload["TransactionPosted"]["legs"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // The same command again: the first reply, nothing written; the id again: already used.
    let before = Books::read(&app).await;
    assert_eq!(
        app.send_with_id("transaction.post", command_id, body.clone())
            .await,
        reply
    );
    let again = app.send("transaction.post", body).await;
    assert_eq!(super::refusal(&again).0, ErrorCode::AlreadyExists);
    assert_eq!(Books::read(&app).await, before);
}

#[tokio::test]
async fn an_exchange_goes_through_each_currencys_exchange_account() {
    let app = TestApp::spawn().await;
    open(&app, "eur-1", "o", "EUR", 10_000).await;
    open(&app, "usd-1", "o", "USD", 0).await;
    accepted(
        &post(
            &app,
            vec![
                leg("eur-1", "@exchange:EUR", 1_000, "EUR"),
                leg("@exchange:USD", "usd-1", 1_100, "USD"),
            ],
        )
        .await,
    );
    let books = Books::read(&app).await;
    books.assert_balanced();
    assert_eq!(books.balance("eur-1"), 9_000);
    assert_eq!(books.balance("usd-1"), 1_100);
    assert_eq!(books.system("@exchange:EUR"), 1_000);
    assert_eq!(books.system("@exchange:USD"), -1_100);
}

#[tokio::test]
async fn every_bad_transaction_is_refused_with_its_code_and_writes_nothing() {
    let app = TestApp::spawn().await;
    open(&app, "rich", "o", "EUR", 1_000).await;
    open(&app, "other", "o", "EUR", 0).await;
    open(&app, "dollar", "o", "USD", 1_000).await;
    open(&app, "cold", "o", "EUR", 100).await;
    accepted(
        &app.send(
            "account.freeze",
            json!({"account_id": "cold", "reason": "kyc"}),
        )
        .await,
    );
    open(&app, "gone", "o", "EUR", 0).await;
    accepted(
        &app.send("account.close", json!({"account_id": "gone"}))
            .await,
    );
    let tx = |legs: Vec<Value>| json!({"transaction_id": Uuid::now_v7(), "legs": legs, "reference": "bad"});
    let sixty_five = (0..65).map(|_| leg("rich", "other", 1, "EUR")).collect();
    let cases = vec![
        // One currency's legs not balancing: EUR leaves, nothing of it arrives anywhere.
        (
            tx(vec![leg("rich", "dollar", 10, "EUR")]),
            ErrorCode::CurrencyMismatch,
        ),
        (
            tx(vec![leg("rich", "nobody", 10, "EUR")]),
            ErrorCode::NotFound,
        ),
        (
            tx(vec![leg("nobody", "rich", 10, "EUR")]),
            ErrorCode::NotFound,
        ),
        (
            tx(vec![leg("rich", "gone", 10, "EUR")]),
            ErrorCode::AccountClosed,
        ),
        (
            tx(vec![leg("rich", "rich", 10, "EUR")]),
            ErrorCode::SchemaViolation,
        ),
        (
            tx(vec![leg("rich", "other", 10, "USD")]),
            ErrorCode::CurrencyMismatch,
        ),
        (
            tx(vec![leg("rich", "@fees:USD", 10, "EUR")]),
            ErrorCode::CurrencyMismatch,
        ),
        (
            tx(vec![leg("@world:EUR", "@fees:EUR", 10, "EUR")]),
            ErrorCode::SchemaViolation,
        ),
        (
            tx(vec![leg("rich", "@bank:EUR", 10, "EUR")]),
            ErrorCode::SchemaViolation,
        ),
        (
            tx(vec![leg("cold", "other", 10, "EUR")]),
            ErrorCode::AccountFrozen,
        ),
        (tx(sixty_five), ErrorCode::SchemaViolation),
        (tx(vec![]), ErrorCode::SchemaViolation),
        // The first leg would pass; the second cannot: neither is written.
        (
            tx(vec![
                leg("rich", "other", 10, "EUR"),
                leg("other", "rich", 500, "EUR"),
            ]),
            ErrorCode::InsufficientFunds,
        ),
        (
            tx(vec![
                leg("rich", "other", 600, "EUR"),
                leg("rich", "other", 600, "EUR"),
            ]),
            ErrorCode::InsufficientFunds,
        ),
    ];
    let cases = cases
        .into_iter()
        .map(|(body, code)| ("transaction.post", body, code))
        .collect();
    refused_writing_nothing(&app, cases, None).await;
    Books::read(&app).await.assert_balanced();
}

#[tokio::test]
async fn sixty_four_legs_are_posted_and_sixty_five_refused() {
    let app = TestApp::spawn().await;
    open(&app, "source", "o", "EUR", 10_000).await;
    for i in 0..8 {
        open(&app, &format!("sink-{i}"), "o", "EUR", 0).await;
    }
    let legs = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| leg("source", &format!("sink-{}", i % 8), 1 + i as i64, "EUR"))
            .collect()
    };
    accepted(&post(&app, legs(64)).await);
    let books = Books::read(&app).await;
    books.assert_balanced();
    let moved: i64 = (1..=64).sum();
    assert_eq!(books.balance("source"), 10_000 - moved);
    let sinks: i64 = (0..8).map(|i| books.balance(&format!("sink-{i}"))).sum();
    assert_eq!(sinks, moved);
    let legs_65 = json!({"transaction_id": Uuid::now_v7(), "legs": legs(65)});
    refused_writing_nothing(
        &app,
        vec![("transaction.post", legs_65, ErrorCode::SchemaViolation)],
        None,
    )
    .await;
}

/// Two clients post transactions over the same accounts in opposite directions at once (each
/// one locking its accounts in another order than the other's would): none deadlocks, every one
/// is decided, and no money appears or vanishes.
#[tokio::test]
async fn racing_transactions_over_overlapping_accounts_conserve_money() {
    const EACH: usize = 40;
    let app = Arc::new(TestApp::spawn().await);
    let accounts = ["ra", "rb", "rc", "rd"];
    for id in accounts {
        open(&app, id, "o", "EUR", 100_000).await;
    }
    let forward = |i: usize| {
        vec![
            leg("ra", "rb", 7 + i as i64, "EUR"),
            leg("rb", "rc", 5, "EUR"),
            leg("rc", "rd", 3, "EUR"),
            leg("rd", "@fees:EUR", 1, "EUR"),
        ]
    };
    let backward = |i: usize| {
        vec![
            leg("rd", "rc", 4 + i as i64, "EUR"),
            leg("rc", "rb", 6, "EUR"),
            leg("rb", "ra", 2, "EUR"),
        ]
    };
    let mut tasks = tokio::task::JoinSet::new();
    for legs_of in [forward as fn(usize) -> Vec<Value>, backward] {
        let app = Arc::clone(&app);
        tasks.spawn(async move {
            let mut posted = Vec::new();
            for i in 0..EACH {
                let legs = legs_of(i);
                let reply = post(&app, legs.clone()).await;
                match &reply {
                    CommandReply::Accepted { .. } => posted.push(legs),
                    CommandReply::Rejected { error, .. } => {
                        panic!("refused under contention: {} {}", error.code, error.message)
                    }
                }
            }
            posted
        });
    }
    let mut expected: std::collections::BTreeMap<String, i64> = accounts
        .iter()
        .map(|a| ((*a).to_owned(), 100_000))
        .collect();
    let mut fees = 0;
    while let Some(done) = tasks.join_next().await {
        for legs in done.unwrap() {
            for l in legs {
                let amount = l["amount"].as_i64().unwrap();
                for (side, sign) in [("from", -1), ("to", 1)] {
                    let id = l[side].as_str().unwrap();
                    match expected.get_mut(id) {
                        Some(balance) => *balance += sign * amount,
                        None => fees += amount,
                    }
                }
            }
        }
    }
    let books = Books::read(&app).await;
    books.assert_balanced();
    for (id, balance) in &expected {
        assert_eq!(books.balance(id), *balance, "{id}");
    }
    let clients: i64 = accounts.iter().map(|a| books.balance(a)).sum();
    assert_eq!(
        clients + fees,
        4 * 100_000,
        "client totals are the deposits less fees"
    );
    assert_eq!(books.system("@fees:EUR"), fees);
    assert_eq!(fees, EACH as i64);
    assert_eq!(books.system("@world:EUR"), -4 * 100_000);
}

#[tokio::test]
async fn deposit_withdraw_and_transfer_request_are_unchanged_and_read_as_postings() {
    let app = TestApp::spawn().await;
    open(&app, "old-a", "o", "EUR", 0).await;
    open(&app, "old-b", "o", "EUR", 0).await;
    let deposit = app
        .send(
            "account.deposit",
            json!({"account_id": "old-a", "amount": 500, "reference": "r"}),
        )
        .await;
    assert_eq!(accepted(&deposit), ("old-a".to_owned(), 2));
    accepted(
        &app.send(
            "account.withdraw",
            json!({"account_id": "old-a", "amount": 100}),
        )
        .await,
    );
    let transfer = Uuid::now_v7();
    let reply = app
        .send(
            "transfer.request",
            json!({"transfer_id": transfer, "from": "old-a", "to": "old-b", "amount": 150}),
        )
        .await;
    assert_eq!(accepted(&reply).0, transfer.to_string());
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'account' ORDER BY global_position",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        types,
        [
            "AccountOpened",
            "AccountOpened",
            "MoneyDeposited",
            "MoneyWithdrawn",
            "TransferDebited",
            "TransferCredited"
        ]
    );
    let books = Books::read(&app).await;
    books.assert_balanced();
    assert_eq!((books.balance("old-a"), books.balance("old-b")), (250, 150));
    assert_eq!(books.system("@world:EUR"), -400);
    assert_eq!(books.system("@transit:EUR"), 0);
}
