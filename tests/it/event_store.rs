//! Our `events` table stays compatible with postgres-es 0.5: its own writes and reads work, and
//! our extra columns fill themselves in.

use cqrs_es::EventStore;
use cqrs_es::persist::PersistedEventStore;
use domain::account::{AccountCommand, Deposit, OpenAccount};
use domain::{Account, EventMetadata};
use postgres_es::PostgresEventRepository;
use tests::TestApp;

#[tokio::test]
async fn postgres_es_reads_and_writes_our_events_table() {
    let app = TestApp::spawn().await;
    let cqrs = postgres_es::postgres_cqrs::<Account>(app.db.clone(), vec![], Default::default());
    let metadata = EventMetadata::for_command(uuid::Uuid::new_v4(), "tester", chrono_now());
    cqrs.execute_with_metadata(
        "acc-1",
        AccountCommand::Open(OpenAccount {
            account_id: "acc-1".into(),
            owner: "alice".into(),
            currency: "EUR".into(),
            metadata: Default::default(),
        }),
        metadata.to_map(),
    )
    .await
    .unwrap();
    cqrs.execute_with_metadata(
        "acc-1",
        AccountCommand::Deposit(Deposit {
            account_id: "acc-1".into(),
            amount: 250,
            reference: "r".into(),
            channel: Default::default(),
        }),
        metadata.to_map(),
    )
    .await
    .unwrap();

    let store = PersistedEventStore::<_, Account>::new_event_store(PostgresEventRepository::new(
        app.db.clone(),
    ));
    let events = store.load_events("acc-1").await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        EventMetadata::from_map(&events[1].metadata).unwrap(),
        metadata
    );
    let context = store.load_aggregate("acc-1").await.unwrap();
    assert_eq!(context.aggregate.balance, 250);

    let rows: Vec<(i64, i64, bool)> = sqlx::query_as(
        "SELECT sequence, global_position, tx_id IS NOT NULL FROM events ORDER BY global_position",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows[0].1 < rows[1].1,
        "global_position follows insert order"
    );
    assert!(rows.iter().all(|r| r.2));
}

#[tokio::test]
async fn a_sequence_clash_is_a_conflict_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let insert = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                  VALUES ('account', 'a', 1, 'AccountOpened', '1.0', '{}', '{}')";
    sqlx::query(insert).execute(&app.db).await.unwrap();
    let clash = sqlx::query(insert).execute(&app.db).await.unwrap_err();
    let code = clash
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("23505"));
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

/// After a failover, a session opened on the old primary meets a standby: its writes fail with
/// `25006`. That is an outage the client may retry (`unavailable`), not an `internal` error:
/// the chaos run saw 2,936 commands refused `internal` this way before it was classified.
#[tokio::test]
async fn a_write_on_a_read_only_server_is_an_outage_not_a_bug() {
    let app = TestApp::spawn().await;
    let mut conn = app.db.acquire().await.unwrap();
    sqlx::query("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        .execute(&mut *conn)
        .await
        .unwrap();
    let refused = sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('account', 'a', 1, 'AccountOpened', '1.0', '{}', '{}')",
    )
    .execute(&mut *conn)
    .await
    .unwrap_err();
    assert!(
        matches!(
            event_store::error::classify(refused),
            event_store::error::StoreError::Unavailable(_)
        ),
        "a read-only refusal must be classified as an outage"
    );
    conn.detach();
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}
