//! Partitioned projections with real worker processes: ownership of the events stream's
//! partitions is shared among the live workers, a `kill -9`ed worker's partitions are taken
//! over within seconds (not after the 30 s ack wait), and the read model still equals the audit
//! re-derivation of every account.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::CommandReply;
use serde_json::json;
use tests::TestApp;
use tests::binaries::workspace_binary;
use tokio::sync::Mutex;

const ACCOUNTS: usize = 24;
const SENDERS: usize = 12;
/// Accounts with a single deposit during the kill test (see there).
const QUIET_ACCOUNTS: usize = 8;
/// The events stream's partitions (the default of `--event-partitions`).
const PARTITIONS: u32 = 4;

/// A projections worker as the real binary, killed when dropped (a failed assertion too).
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Starts a projections worker binary on this test's database, NATS and prefix.
fn start_worker(app: &TestApp) -> Worker {
    let child = Command::new(workspace_binary("projections"))
        .args(app.service_flags())
        .arg("--ops-addr=127.0.0.1:0")
        .env("TALLY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("projections binary (cargo build --workspace --bins)");
    Worker(child)
}

/// Partition -> the PostgreSQL backend (one per worker) holding it.
async fn owners(app: &TestApp) -> BTreeMap<u32, i32> {
    projections::partitions::owners(&app.db)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Waits until every partition is owned, by exactly `workers` distinct workers, each with a
/// share of at least `PARTITIONS / workers`.
async fn wait_shared(app: &TestApp, workers: usize, timeout: Duration) -> BTreeMap<u32, i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = owners(app).await;
        let mut shares: HashMap<i32, usize> = HashMap::new();
        for pid in now.values() {
            *shares.entry(*pid).or_default() += 1;
        }
        let fair = PARTITIONS as usize / workers;
        if now.len() == PARTITIONS as usize
            && shares.len() == workers
            && shares.values().all(|s| *s >= fair)
        {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "partitions not shared by {workers} workers: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Accepted (account, version) pairs, shared by the senders.
type Accepted = Arc<Mutex<Vec<(String, u64)>>>;

/// Deposits of 1 into random accounts from `SENDERS` tasks until `stop`; the accepted
/// (account, version) pairs.
fn send_load(
    app: &Arc<TestApp>,
    stop: &tokio_util::sync::CancellationToken,
) -> (Accepted, Vec<tokio::task::JoinHandle<()>>) {
    let accepted: Accepted = Arc::default();
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let (app, accepted, stop) = (Arc::clone(app), Arc::clone(&accepted), stop.clone());
        senders.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.is_cancelled() {
                i += 1;
                let id = format!("p{}", (s * 5 + i * 7) % ACCOUNTS);
                let reply = app
                    .send("account.deposit", json!({"account_id": id, "amount": 1}))
                    .await;
                if let CommandReply::Accepted {
                    aggregate_id,
                    version,
                    ..
                } = reply
                {
                    accepted.lock().await.push((aggregate_id, version));
                }
            }
        }));
    }
    (accepted, senders)
}

/// Accounts whose read model is below the last accepted version.
async fn behind(app: &TestApp, wanted: &BTreeMap<String, u64>) -> Vec<(String, u64, i64)> {
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT account_id, version FROM accounts")
        .fetch_all(&app.db)
        .await
        .unwrap();
    let have: HashMap<String, i64> = rows.into_iter().collect();
    wanted
        .iter()
        .filter_map(|(id, v)| {
            let got = have.get(id).copied().unwrap_or(0);
            (got < i64::try_from(*v).unwrap()).then(|| (id.clone(), *v, got))
        })
        .collect()
}

async fn open_accounts(app: &TestApp) {
    let ids = (0..ACCOUNTS)
        .map(|a| format!("p{a}"))
        .chain((0..QUIET_ACCOUNTS).map(|q| format!("q{q}")));
    for id in ids {
        tests::client::accepted(
            &app.send(
                "account.open",
                json!({"account_id": id, "owner": "o", "currency": "EUR"}),
            )
            .await,
        );
    }
}

/// The read model equals what the audit re-derives from the store, nothing skipped.
async fn read_model_matches_audit(app: &TestApp) {
    let report = audit::verify::verify(
        &app.db,
        &audit::verify::VerifyOptions {
            compare_read_model: true,
            findings_max: 20,
            ..Default::default()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.findings_total, 0, "{:?}", report.findings);
    assert_eq!(report.read_models_behind, 0);
    assert!(report.read_models_compared >= ACCOUNTS as u64);
    app.assert_no_skipped_events().await;
}

#[tokio::test]
async fn kill_9_of_a_worker_under_load_is_taken_over_within_seconds() {
    let mut app = TestApp::spawn().await;
    // Only the real binaries apply events from here on.
    app.stop_projections().await;
    open_accounts(&app).await;
    let mut first = start_worker(&app);
    let first_backend = *wait_shared(&app, 1, Duration::from_secs(30))
        .await
        .values()
        .next()
        .unwrap();
    let second = start_worker(&app);
    let shared = wait_shared(&app, 2, Duration::from_secs(30)).await;
    let first_partitions: Vec<u32> = shared
        .iter()
        .filter(|(_, pid)| **pid == first_backend)
        .map(|(k, _)| *k)
        .collect();
    assert!(!first_partitions.is_empty(), "{shared:?}");

    let app = Arc::new(app);
    let stop = tokio_util::sync::CancellationToken::new();
    let (accepted, senders) = send_load(&app, &stop);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Kill the first worker while it holds deliveries it has not acknowledged: the stall came
    // from exactly those (they return only after the ack wait). To be sure it holds some, hold
    // the projection's write lock (as a rebuild's swap does): every batch waits for it with its
    // deliveries unacknowledged.
    let mut swap = app.db.begin().await.unwrap();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('tally.projection.write:accounts', 0))",
    )
    .execute(&mut *swap)
    .await
    .unwrap();
    // Accounts that get one deposit now and none after: if the dead worker holds it, no later
    // event of theirs arrives to reveal the gap, so only a takeover that redelivers at once
    // (not after the ack wait) brings them up to date.
    for q in 0..QUIET_ACCOUNTS {
        let id = format!("q{q}");
        let reply = app
            .send("account.deposit", json!({"account_id": id, "amount": 5}))
            .await;
        accepted.lock().await.push(tests::client::accepted(&reply));
    }
    let stream = app.jetstream.get_stream(&app.streams.events).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let held = 'held: loop {
        for k in &first_partitions {
            let info = stream
                .consumer_info(projections::lag::consumer_name(
                    projections::Projection::Accounts,
                    *k,
                ))
                .await
                .unwrap();
            if info.num_ack_pending > 0 {
                break 'held info.num_ack_pending;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the first worker never held an unacknowledged delivery"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let before_kill = accepted.lock().await.len();
    assert!(before_kill > 20, "only {before_kill} deposits accepted");
    first.0.kill().unwrap(); // SIGKILL: no unpin, no ack, no goodbye
    first.0.wait().unwrap();
    let killed_at = Instant::now();
    swap.rollback().await.unwrap();
    eprintln!("killed a worker holding {held} unacknowledged deliveries");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    for sender in senders {
        sender.await.unwrap();
    }
    let load_stopped = Instant::now();

    let mut wanted: BTreeMap<String, u64> = BTreeMap::new();
    for (id, version) in accepted.lock().await.iter() {
        let v = wanted.entry(id.clone()).or_default();
        *v = (*v).max(*version);
    }
    // Far below the 30 s ack wait after which the dead worker's deliveries come back.
    let deadline = load_stopped + Duration::from_secs(10);
    loop {
        let missing = behind(&app, &wanted).await;
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} s after the kill, {} accounts still behind (account, accepted, read model): {:?}",
            killed_at.elapsed().as_secs(),
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "read model complete {:.1} s after the kill, {:.1} s after the load stopped",
        killed_at.elapsed().as_secs_f64(),
        load_stopped.elapsed().as_secs_f64()
    );
    // The survivor owns every partition.
    wait_shared(&app, 1, Duration::from_secs(5)).await;
    read_model_matches_audit(&app).await;

    // Partitions whose consumers were recreated for the takeover change hands again (a worker
    // joins): the new owner binds to each consumer as it is. It once asked for it as first
    // created, the server refused to change where it starts (10012), and the partition stopped
    // for good (seen in `./dev chaos`).
    let third = start_worker(&app);
    wait_shared(&app, 2, Duration::from_secs(30)).await;
    for (id, version) in wanted.iter_mut() {
        let reply = app
            .send("account.deposit", json!({"account_id": id, "amount": 1}))
            .await;
        let (_, applied) = tests::client::accepted(&reply);
        *version = applied;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let missing = behind(&app, &wanted).await;
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after a worker joined, {} accounts still behind: {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    read_model_matches_audit(&app).await;
    drop(third);
    drop(second);
}

#[tokio::test]
async fn workers_share_the_partitions_and_a_joiner_gets_a_share() {
    let mut app = TestApp::spawn().await;
    app.stop_projections().await;
    open_accounts(&app).await;
    let mut workers = vec![start_worker(&app)];
    let alone = wait_shared(&app, 1, Duration::from_secs(30)).await;
    assert_eq!(alone.len(), PARTITIONS as usize);

    workers.push(start_worker(&app));
    let two = wait_shared(&app, 2, Duration::from_secs(15)).await;
    let pids: BTreeSet<i32> = two.values().copied().collect();
    assert_eq!(pids.len(), 2, "{two:?}");

    // Core-NATS subscribers see the subject as published; only the stream stores the
    // partition token.
    let mut live = app
        .nats
        .subscribe(format!("{}.evt.account.>", app.subjects.prefix()))
        .await
        .unwrap();
    let app = Arc::new(app);
    let stop = tokio_util::sync::CancellationToken::new();
    let (accepted, senders) = send_load(&app, &stop);
    let published =
        tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut live))
            .await
            .unwrap()
            .unwrap();
    let id = published
        .subject
        .as_str()
        .rsplit('.')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        published.subject.as_str(),
        app.subjects.event("account", &id)
    );
    let stream = app.jetstream.get_stream(&app.streams.events).await.unwrap();
    let stored = stream
        .get_last_raw_message_by_subject(&format!("{}.*", app.subjects.event("account", &id)))
        .await
        .unwrap();
    let partition: u32 = stored
        .subject
        .as_str()
        .rsplit('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(partition < PARTITIONS, "{}", stored.subject);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A third joins under load and takes a share; the others let theirs go.
    workers.push(start_worker(&app));
    let three = wait_shared(&app, 3, Duration::from_secs(15)).await;
    assert_eq!(
        three.values().copied().collect::<BTreeSet<_>>().len(),
        3,
        "{three:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    for sender in senders {
        sender.await.unwrap();
    }
    let mut wanted: BTreeMap<String, u64> = BTreeMap::new();
    for (id, version) in accepted.lock().await.iter() {
        let v = wanted.entry(id.clone()).or_default();
        *v = (*v).max(*version);
    }
    assert!(!wanted.is_empty());
    let deadline = Instant::now() + Duration::from_secs(15);
    while !behind(&app, &wanted).await.is_empty() {
        assert!(Instant::now() < deadline, "read model behind");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    read_model_matches_audit(&app).await;
    drop(workers);
}
