//! `batch.submit`: up to 1,000 commands in one message, each with its own id and reply
//! (`atomic: false`), or all or nothing (`atomic: true`).

use domain::{CommandReply, ErrorCode};
use serde_json::{Value, json};
use tests::TestApp;
use uuid::Uuid;

use super::{BatchAnswer, Books, item, open, refusal, submit};

fn deposits(accounts: usize, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            item(
                "account.deposit",
                json!({"account_id": format!("bd-{}", i % accounts), "amount": 1 + i as i64}),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_batch_of_100_deposits_gets_one_reply_each_in_order() {
    let app = TestApp::spawn().await;
    for i in 0..10 {
        open(&app, &format!("bd-{i}"), "o", "EUR", 0).await;
    }
    let mut items = deposits(10, 100);
    // One bad command among them is refused alone when the batch is not atomic.
    items[50] = item(
        "account.withdraw",
        json!({"account_id": "bd-0", "amount": 1_000_000}),
    );
    let results = submit(&app, false, &items, None).await.results();
    assert_eq!(results.len(), 100);
    for (i, (reply, sent)) in results.iter().zip(&items).enumerate() {
        assert_eq!(
            reply.command_id().to_string(),
            sent["command_id"].as_str().unwrap(),
            "reply {i} is not its command's"
        );
        if i == 50 {
            assert_eq!(refusal(reply).0, ErrorCode::InsufficientFunds);
        } else {
            let CommandReply::Accepted { aggregate_id, .. } = reply else {
                panic!("{i}: {reply:?}");
            };
            assert_eq!(aggregate_id, &format!("bd-{}", i % 10));
        }
    }
    let books = Books::read(&app).await;
    books.assert_balanced();
    let deposited: i64 = (0..100).filter(|i| *i != 50).map(|i| 1 + i as i64).sum();
    let total: i64 = (0..10).map(|i| books.balance(&format!("bd-{i}"))).sum();
    assert_eq!(total, deposited);

    // The same batch again: every command id gets its first reply, nothing is written twice.
    let again = submit(&app, false, &items, None).await.results();
    assert_eq!(again, results);
    assert_eq!(Books::read(&app).await, books);
}

#[tokio::test]
async fn an_atomic_batch_with_one_bad_command_writes_nothing() {
    let app = TestApp::spawn().await;
    for i in 0..3 {
        open(&app, &format!("bd-{i}"), "o", "EUR", 0).await;
    }
    let mut items = deposits(3, 10);
    items.push(item(
        "transaction.post",
        json!({"transaction_id": Uuid::now_v7(), "legs": [super::leg("bd-1", "bd-2", 1_000, "EUR")]}),
    ));
    items.extend(deposits(3, 5));
    let before = Books::read(&app).await;
    let results = submit(&app, true, &items, None).await.results();
    assert_eq!(results.len(), items.len());
    for (i, reply) in results.iter().enumerate() {
        let (code, details) = refusal(reply);
        if i == 10 {
            assert_eq!(code, ErrorCode::InsufficientFunds, "{reply:?}");
        } else {
            assert_eq!(code, ErrorCode::Conflict, "{i}: {reply:?}");
            assert_eq!(details["refused_index"], 10, "{i}: {details}");
        }
    }
    assert_eq!(
        Books::read(&app).await,
        before,
        "an atomic batch half-happened"
    );

    // Without the bad command, all of it, at once.
    items.remove(10);
    let results = submit(&app, true, &items, None).await.results();
    assert!(
        results
            .iter()
            .all(|r| matches!(r, CommandReply::Accepted { .. })),
        "{results:?}"
    );
    let books = Books::read(&app).await;
    books.assert_balanced();
    let total: i64 = (0..3).map(|i| books.balance(&format!("bd-{i}"))).sum();
    let expected: i64 = (1..=10).sum::<i64>() + (1..=5).sum::<i64>();
    assert_eq!(total, expected);
}

#[tokio::test]
async fn a_batch_of_1001_commands_or_none_is_refused_whole() {
    let app = TestApp::spawn().await;
    open(&app, "bd-0", "o", "EUR", 0).await;
    let before = Books::read(&app).await;
    for items in [deposits(1, 1_001), Vec::new()] {
        for atomic in [false, true] {
            match submit(&app, atomic, &items, None).await {
                BatchAnswer::Refused(reply) => {
                    assert_eq!(refusal(&reply).0, ErrorCode::SchemaViolation, "{reply:?}");
                }
                BatchAnswer::Results(results) => panic!(
                    "a batch of {} was run: {} results",
                    items.len(),
                    results.len()
                ),
            }
        }
    }
    // 1,000 is the bound, not past it.
    let results = submit(&app, false, &deposits(1, 1_000), None)
        .await
        .results();
    assert_eq!(results.len(), 1_000);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, CommandReply::Accepted { .. }))
    );
    let after = Books::read(&app).await;
    assert_eq!(after.balance("bd-0"), (1..=1_000).sum::<i64>());
    assert_eq!(after.version("bd-0"), before.version("bd-0") + 1_000);
}
