//! Limits that hold against a flood: commands executing at once stay within
//! `TALLY_COMMANDS_IN_FLIGHT_MAX` even when their callers stopped waiting.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use domain::CommandReply;
use serde_json::json;
use tests::TestApp;
use tests::client::accepted;
use uuid::Uuid;

/// Sessions of this test's database waiting for a lock.
async fn waiting_on_locks(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
    )
    .bind(&app.db_name)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn commands_whose_callers_gave_up_still_count_as_in_flight() {
    let mut app = TestApp::spawn().await;
    app.stop_command_service().await;
    // The hold expiry worker reads `events` every round: under the lock below it would be a
    // waiting session that is not a command. Its first round is over before the lock is taken.
    app.start_command_service(&[
        "--commands-in-flight-max=2",
        "--command-timeout-ms=300",
        "--hold-expiry-interval-ms=600000",
    ])
    .await;
    let accounts: Vec<String> = (0..6).map(|i| format!("b-{i}")).collect();
    for id in &accounts {
        accepted(
            &app.send(
                "account.open",
                json!({"account_id": id, "owner": "o", "currency": "EUR"}),
            )
            .await,
        );
    }
    // Every command now blocks on the event store until the lock is released.
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let ids: Vec<Uuid> = accounts.iter().map(|_| Uuid::now_v7()).collect();
    let mut replies = futures::stream::FuturesUnordered::new();
    for (id, account) in ids.iter().zip(&accounts) {
        let mut headers = HeaderMap::new();
        headers.insert("Tally-Command-Id", id.to_string().as_str());
        headers.insert(
            "Authorization",
            format!("Bearer {}", tests::app::admin_token()).as_str(),
        );
        let request = app.nats.request_with_headers(
            format!("{}.cmd.account.deposit", app.subjects.prefix()),
            headers,
            serde_json::to_vec(&json!({"account_id": account, "amount": 1}))
                .unwrap()
                .into(),
        );
        replies.push(tokio::time::timeout(Duration::from_secs(15), request));
    }
    // The marker: two commands started and their callers were told `unavailable`.
    let mut answered = Vec::new();
    while answered.len() < 2 {
        let reply = futures::StreamExt::next(&mut replies).await.unwrap();
        let reply: CommandReply = serde_json::from_slice(&reply.unwrap().unwrap().payload).unwrap();
        assert_eq!(
            tests::client::rejected_code(&reply),
            domain::ErrorCode::Unavailable
        );
        answered.push(reply);
    }
    // Those two still run (blocked), so no other may start: at most 2 sessions ever wait.
    let mut most = 0;
    let watch_until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < watch_until {
        most = most.max(waiting_on_locks(&app).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(most >= 1, "the blocked commands were not seen waiting");
    assert!(
        most <= 2,
        "{most} commands executed at once with a limit of 2"
    );
    lock.commit().await.unwrap();
    // Every command runs once the store is free.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logged: i64 =
            sqlx::query_scalar("SELECT count(*) FROM command_log WHERE command_id = ANY($1)")
                .bind(&ids)
                .fetch_one(&app.db)
                .await
                .unwrap();
        if logged == ids.len() as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "{logged} of {} ran", ids.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn one_accounts_queue_is_bounded() {
    let mut app = TestApp::spawn().await;
    app.stop_command_service().await;
    app.start_command_service(&["--account-queue-max=4"]).await;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "q-1", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let ids: Vec<Uuid> = (0..12).map(|_| Uuid::now_v7()).collect();
    let mut replies = futures::stream::FuturesUnordered::new();
    for id in &ids {
        let mut headers = HeaderMap::new();
        headers.insert("Tally-Command-Id", id.to_string().as_str());
        headers.insert(
            "Authorization",
            format!("Bearer {}", tests::app::admin_token()).as_str(),
        );
        replies.push(tokio::time::timeout(
            Duration::from_secs(15),
            app.nats.request_with_headers(
                format!("{}.cmd.account.deposit", app.subjects.prefix()),
                headers,
                serde_json::to_vec(&json!({"account_id": "q-1", "amount": 1}))
                    .unwrap()
                    .into(),
            ),
        ));
    }
    // While the store is locked, everything beyond the queue's 4 places is refused at once.
    let mut refused = 0;
    while refused < ids.len() - 4 {
        let reply = futures::StreamExt::next(&mut replies).await.unwrap();
        let reply: CommandReply = serde_json::from_slice(&reply.unwrap().unwrap().payload).unwrap();
        assert_eq!(
            tests::client::rejected_code(&reply),
            domain::ErrorCode::RateLimited,
            "{reply:?}"
        );
        refused += 1;
    }
    lock.commit().await.unwrap();
    // The 4 queued ones run; the refused ones were not recorded, so their ids are free.
    let mut accepted_count = 0;
    while let Some(reply) = futures::StreamExt::next(&mut replies).await {
        let reply: CommandReply = serde_json::from_slice(&reply.unwrap().unwrap().payload).unwrap();
        accepted(&reply);
        accepted_count += 1;
    }
    assert_eq!(accepted_count, 4);
    let logged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM command_log WHERE command_id = ANY($1)")
            .bind(&ids)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(logged, 4);
}

/// `tally_commands_in_flight` as the command-service's `/metrics` states it.
async fn in_flight(app: &TestApp) -> i64 {
    let text = app
        .http
        .get(format!("http://{}/metrics", app.command_ops_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("tally_commands_in_flight "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tally_commands_in_flight in /metrics"))
}

#[tokio::test]
async fn a_batchs_commands_take_their_places_among_the_commands_in_flight() {
    let mut app = TestApp::spawn().await;
    app.stop_command_service().await;
    app.start_command_service(&[
        "--commands-in-flight-max=3",
        "--hold-expiry-interval-ms=600000",
    ])
    .await;
    let accounts: Vec<String> = (0..6).map(|i| format!("bb-{i}")).collect();
    for id in &accounts {
        accepted(
            &app.send(
                "account.open",
                json!({"account_id": id, "owner": "o", "currency": "EUR"}),
            )
            .await,
        );
    }
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    // One message, six commands on six accounts, all blocked on the store: they must fill the
    // three places (not run beside them, as uncounted work would).
    let items: Vec<_> = accounts
        .iter()
        .map(|a| crate::ledger::item("account.deposit", json!({"account_id": a, "amount": 1})))
        .collect();
    let watched = async {
        let mut most = 0;
        let until = Instant::now() + Duration::from_millis(2_000);
        while Instant::now() < until {
            most = most.max(in_flight(&app).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        lock.commit().await.unwrap();
        most
    };
    let (answer, most) = tokio::join!(crate::ledger::submit(&app, false, &items, None), watched);
    assert_eq!(
        most, 3,
        "the batch's commands did not take their places in flight"
    );
    for reply in answer.results() {
        accepted(&reply);
    }
    assert_eq!(in_flight(&app).await, 0);
}
