//! Poison events: after N tries the event goes to the dead-letter stream, its aggregate's later
//! events wait behind it, every other aggregate moves on, and `tally dlq retry` applies it and
//! the parked events in order once the cause is fixed.

use std::time::{Duration, Instant};

use serde_json::json;
use tests::TestApp;
use tests::binaries::workspace_binary;
use tests::client::accepted;

async fn version(app: &TestApp, id: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT COALESCE((SELECT version FROM accounts WHERE account_id = $1), 0)",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

/// Polls `check` every 50 ms until it holds, for at most 30 s.
pub(crate) async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn tally_dlq(app: &TestApp, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(workspace_binary("tally"))
        .arg("dlq")
        .args(args)
        .arg(format!("--database-url={}", app.db_url))
        .output()
        .await
        .expect("tally binary")
}

type Worker = tokio::task::JoinHandle<std::io::Result<()>>;

/// An app whose projection worker gives up after `attempts` deliveries, and a cause of poison:
/// the read model refuses entries with reference `poison` (think: a bug in a projection).
async fn with_poison_cause(
    attempts: u32,
) -> (TestApp, tokio_util::sync::CancellationToken, Worker) {
    let mut app = TestApp::spawn().await;
    app.stop_projections().await;
    let config = <projections::Config as clap::Parser>::try_parse_from(
        std::iter::once("projections".to_owned())
            .chain(app.service_flags())
            .chain([
                "--ops-addr=127.0.0.1:0".to_owned(),
                format!("--projection-poison-attempts={attempts}"),
            ]),
    )
    .unwrap();
    let worker = projections::Application::build(config).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(worker.run(stop.clone()));
    sqlx::query(
        "ALTER TABLE account_entries ADD CONSTRAINT no_poison CHECK (reference <> 'poison')",
    )
    .execute(&app.db)
    .await
    .unwrap();
    (app, stop, worker)
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_parks_its_aggregate_and_is_retried_once_fixed() {
    // A projection worker that gives up after two deliveries, and a cause of poison.
    let (app, stop, worker) = with_poison_cause(2).await;
    for id in ["sick", "well"] {
        accepted(
            &app.send(
                "account.open",
                json!({"account_id": id, "owner": "o", "currency": "EUR"}),
            )
            .await,
        );
    }
    accepted(
        &app.send(
            "account.deposit",
            json!({"account_id": "sick", "amount": 10}),
        )
        .await,
    );
    accepted(
        &app.send(
            "account.deposit",
            json!({"account_id": "sick", "amount": 5, "reference": "poison"}),
        )
        .await,
    );
    accepted(
        &app.send(
            "account.deposit",
            json!({"account_id": "sick", "amount": 1}),
        )
        .await,
    );
    accepted(
        &app.send(
            "account.deposit",
            json!({"account_id": "sick", "amount": 2}),
        )
        .await,
    );
    accepted(
        &app.send(
            "account.deposit",
            json!({"account_id": "well", "amount": 7}),
        )
        .await,
    );

    // The healthy aggregate moves on; the sick one stops right before the poison event.
    eventually("well projected", async || version(&app, "well").await == 2).await;
    eventually("sick parked with two events waiting", async || {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM projection_parked_events WHERE aggregate_id = 'sick'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        waiting == 2
    })
    .await;
    assert_eq!(
        version(&app, "sick").await,
        2,
        "a later event overtook the poison one"
    );
    let mut dlq = app
        .jetstream
        .get_stream(&app.streams.dead_letters)
        .await
        .unwrap();
    assert_eq!(dlq.info().await.unwrap().state.messages, 1);
    let letter = dlq.get_raw_message(1).await.unwrap();
    assert_eq!(
        letter.headers.get("Tally-Aggregate-Id").map(|v| v.as_str()),
        Some("sick")
    );
    assert!(
        letter
            .headers
            .get("Tally-Error")
            .map(|v| v.as_str())
            .unwrap_or_default()
            .contains("no_poison")
    );

    let list = tally_dlq(&app, &["list"]).await;
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.contains("account sick #3") && listed.contains("2 waiting"),
        "{listed}"
    );

    // Retrying before the cause is fixed fails and keeps everything parked.
    let early = tally_dlq(&app, &["retry", "--aggregate", "sick"]).await;
    assert_eq!(early.status.code(), Some(1), "{early:?}");
    assert_eq!(version(&app, "sick").await, 2);

    // Fixed: the retry applies the poison event and the parked ones, in order.
    sqlx::query("ALTER TABLE account_entries DROP CONSTRAINT no_poison")
        .execute(&app.db)
        .await
        .unwrap();
    let retry = tally_dlq(&app, &["retry", "--aggregate", "sick"]).await;
    assert_eq!(retry.status.code(), Some(0), "{retry:?}");
    let (balance, version_now): (i64, i64) =
        sqlx::query_as("SELECT balance, version FROM accounts WHERE account_id = 'sick'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((balance, version_now), (18, 5));
    let sequences: Vec<i64> = sqlx::query_scalar(
        "SELECT sequence FROM account_entries WHERE account_id = 'sick' ORDER BY sequence",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(sequences, [2, 3, 4, 5]);

    // And the aggregate flows normally again.
    accepted(
        &app.send(
            "account.deposit",
            json!({"account_id": "sick", "amount": 100}),
        )
        .await,
    );
    eventually("sick flows again", async || {
        version(&app, "sick").await == 6
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn dropping_a_dead_letter_skips_it_and_releases_the_rest() {
    let (app, stop, worker) = with_poison_cause(1).await;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "d", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    accepted(
        &app.send(
            "account.deposit",
            json!({"account_id": "d", "amount": 5, "reference": "poison"}),
        )
        .await,
    );
    accepted(
        &app.send("account.deposit", json!({"account_id": "d", "amount": 1}))
            .await,
    );
    eventually("d parked", async || {
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_parked_events")
            .fetch_one(&app.db)
            .await
            .unwrap();
        waiting == 1
    })
    .await;
    // The cause stays; the operator decides the event is not to be projected.
    let dropped = tally_dlq(&app, &["drop", "--aggregate", "d"]).await;
    assert_eq!(dropped.status.code(), Some(0), "{dropped:?}");
    assert_eq!(version(&app, "d").await, 3);
    let sequences: Vec<i64> = sqlx::query_scalar(
        "SELECT sequence FROM account_entries WHERE account_id = 'd' ORDER BY sequence",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        sequences,
        [3],
        "the dropped event is skipped, the parked one applied"
    );
    stop.cancel();
    worker.await.unwrap().unwrap();
}
