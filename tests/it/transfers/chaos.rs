//! Conservation under chaos: 50 accounts, 5,000 concurrent random transfers, the real
//! command-service and process-manager binaries killed with SIGKILL at random moments and
//! restarted. At the end every transfer is completed or failed, and the money in the accounts
//! equals the money deposited, to the minor unit, in the event store and in the read models.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cqrs_es::Aggregate;
use domain::account::AccountEvent;
use domain::transfer::{Transfer, TransferEvent, TransferStatus};
use domain::{Account, CommandReply, ErrorCode};
use serde_json::json;
use tests::TestApp;
use tests::binaries::workspace_binary;
use tests::child::free_port;
use tokio::sync::Mutex;
use uuid::Uuid;

const ACCOUNTS: usize = 50;
const OPENING_BALANCE: i64 = 10_000;
const TRANSFERS: usize = 5_000;
const SENDERS: usize = 24;
/// Kills stop once the transfers are all sent, and after this many at most.
const KILLS_MAX: usize = 12;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);

/// A tiny deterministic generator (xorshift), seeded per run and printed, so a failing run
/// can be replayed with `TALLY_CHAOS_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn spawn_service(app: &TestApp, name: &str, settlement: &str) -> Child {
    let port = free_port();
    let settlement =
        (name == "command-service").then(|| format!("--transfer-settlement={settlement}"));
    Command::new(workspace_binary(name))
        .args(app.service_flags())
        .args(settlement)
        .arg(format!("--ops-addr=127.0.0.1:{port}"))
        .env(tests::app::TEST_AUTH_ENV.0, tests::app::TEST_AUTH_ENV.1)
        .env("TALLY_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{name} binary (cargo build --workspace --bins): {e}"))
}

/// Sends one transfer request until it gets a final answer (the service may be dead for a
/// while): the same command id every time, so a request that ran before a kill is answered
/// from the command log, never run twice.
async fn request_until_answered(
    app: &TestApp,
    transfer_id: Uuid,
    body: serde_json::Value,
) -> CommandReply {
    let subject = format!("{}.cmd.transfer.request", app.subjects.prefix());
    let payload: bytes::Bytes = serde_json::to_vec(&body).unwrap().into();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            Instant::now() < deadline,
            "transfer {transfer_id} never answered"
        );
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Tally-Command-Id", transfer_id.to_string().as_str());
        headers.insert(
            "Authorization",
            format!("Bearer {}", tests::app::admin_token()).as_str(),
        );
        let request = app
            .nats
            .request_with_headers(subject.clone(), headers, payload.clone());
        if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(3), request).await
            && let Ok(reply) = serde_json::from_slice::<CommandReply>(&response.payload)
        {
            match &reply {
                CommandReply::Rejected { error, .. }
                    if matches!(error.code, ErrorCode::Unavailable | ErrorCode::Conflict) => {}
                _ => return reply,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn kill_9_anywhere_settles_every_transfer_and_conserves_money() {
    chaos("steps").await;
}

/// The same with every transfer settled in its request's own write: a kill lands before or
/// after a whole transfer, never inside one.
#[tokio::test]
async fn kill_9_anywhere_with_transfers_at_once_conserves_money() {
    chaos("at-once").await;
}

async fn chaos(settlement: &'static str) {
    let seed = std::env::var("TALLY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("chaos ({settlement}) seed: {seed} (rerun with TALLY_CHAOS_SEED={seed})");
    let mut app = TestApp::spawn().await;
    for a in 0..ACCOUNTS {
        super::open(&app, &format!("c{a}"), "EUR", OPENING_BALANCE).await;
    }
    let deposited = OPENING_BALANCE * ACCOUNTS as i64;

    // From here on only the real binaries execute commands and drive transfers.
    app.stop_command_service().await;
    app.stop_process_manager().await;
    let services = Arc::new(Mutex::new(HashMap::from([
        (
            "command-service",
            spawn_service(&app, "command-service", settlement),
        ),
        (
            "process-manager",
            spawn_service(&app, "process-manager", settlement),
        ),
    ])));

    let app = Arc::new(app);
    let next = Arc::new(AtomicUsize::new(0));
    let accepted: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let (app, next, accepted) = (Arc::clone(&app), Arc::clone(&next), Arc::clone(&accepted));
        let mut rng = Rng(seed ^ (s as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        senders.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < TRANSFERS {
                let from = rng.below(ACCOUNTS as u64);
                let to = (from + 1 + rng.below(ACCOUNTS as u64 - 1)) % ACCOUNTS as u64;
                // Large enough that some fail for want of funds.
                let amount = 1 + rng.below(1_500) as i64;
                let id = Uuid::now_v7();
                let body = json!({"transfer_id": id, "from": format!("c{from}"), "to": format!("c{to}"), "amount": amount});
                match request_until_answered(&app, id, body).await {
                    CommandReply::Accepted { .. } => accepted.lock().await.push(id),
                    CommandReply::Rejected { error, .. } => {
                        panic!("transfer {id} refused: {error:?}")
                    }
                }
            }
        }));
    }

    // Chaos: kill one of the two at a random moment, restart it a moment later.
    let mut rng = Rng(seed);
    let mut kills = 0;
    while kills < KILLS_MAX && next.load(Ordering::SeqCst) < TRANSFERS {
        tokio::time::sleep(Duration::from_millis(300 + rng.below(1_200))).await;
        let victim = if rng.below(2) == 0 {
            "command-service"
        } else {
            "process-manager"
        };
        let mut running = services.lock().await;
        if let Some(child) = running.get_mut(victim) {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
        running.insert(victim, spawn_service(&app, victim, settlement));
    }
    eprintln!("chaos: {kills} kills");
    for sender in senders {
        sender.await.unwrap();
    }
    let accepted = accepted.lock().await.clone();
    assert_eq!(accepted.len(), TRANSFERS);

    // Every transfer settles: completed or failed, none stuck.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let settled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_type = 'transfer'
             AND event_type IN ('TransferCompleted', 'TransferFailed')",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        if settled == TRANSFERS as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {settled} of {TRANSFERS} transfers settled within {SETTLE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The event store, replayed with the domain's own rules.
    let rows: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, payload FROM events ORDER BY aggregate_type, aggregate_id, sequence",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let mut accounts: HashMap<String, Account> = HashMap::new();
    let mut transfers: HashMap<String, Transfer> = HashMap::new();
    for (kind, id, payload) in rows {
        if kind == "account" {
            let event: AccountEvent = serde_json::from_value(payload).unwrap();
            accounts.entry(id).or_default().apply(event);
        } else {
            let event: TransferEvent = serde_json::from_value(payload).unwrap();
            transfers.entry(id).or_default().apply(event);
        }
    }
    assert_eq!(
        transfers.len(),
        TRANSFERS,
        "one transfer per accepted request"
    );
    let completed = transfers
        .values()
        .filter(|t| t.status == TransferStatus::Completed)
        .count();
    let failed = transfers
        .values()
        .filter(|t| t.status == TransferStatus::Failed)
        .count();
    assert_eq!(completed + failed, TRANSFERS);
    assert!(
        completed > 0 && failed > 0,
        "{completed} completed, {failed} failed: the mix is not exercised"
    );
    let in_store: i64 = accounts.values().map(|a| a.balance).sum();
    assert_eq!(
        in_store, deposited,
        "money created or lost in the event store"
    );
    assert!(
        accounts.values().all(|a| a.transfers_in_flight.is_empty()),
        "a hold was left behind"
    );
    let moved: i64 = transfers
        .values()
        .filter(|t| t.status == TransferStatus::Completed)
        .map(|t| t.amount)
        .sum();
    eprintln!("chaos: {completed} completed ({moved} moved), {failed} failed");

    // The read models, once caught up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (balance, settled): (Option<i64>, i64) = sqlx::query_as(
            "SELECT (SELECT sum(balance)::bigint FROM accounts),
                    (SELECT count(*) FROM transfers WHERE status IN ('completed', 'failed'))",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        if balance == Some(deposited) && settled == TRANSFERS as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "read models: balance {balance:?} (want {deposited}), {settled} transfers settled"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for account in accounts.values() {
        let row: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE account_id = $1")
            .bind(&account.id)
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert_eq!(row, account.balance, "read model of {}", account.id);
    }
    // The auditor's view agrees: every chain, every account, every transfer adds up.
    let verify = app.tally(&["audit", "verify"]).await;
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        tests::tally_cli::stdout(&verify)
    );
    let mut running = services.lock().await;
    for child in running.values_mut() {
        child.kill().ok();
        child.wait().ok();
    }
}
