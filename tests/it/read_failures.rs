//! PostgreSQL failing under the HTTP API: an outage is `unavailable` (503) to a reader, as it is
//! to a writer (`failures.rs`), never `internal`, and reads recover by themselves.
//!
//! A read is held in flight by a table lock the test takes, so that PostgreSQL ends its session
//! while the statement runs: the server then answers it with an error of its own (57P01,
//! `admin_shutdown`) rather than a closed socket, which is what a restart, a failover or an
//! operator's `pg_terminate_backend` does to every statement running at that moment.

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;
use tests::TestApp;
use tests::postgres_server::PostgresServer;

/// The query-service's session of the read that waits for the test's lock, once it waits.
async fn blocked_read(db: &PgPool) -> i32 {
    // Well within the statement timeout (5 s), after which PostgreSQL cancels the read itself.
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'query-service'
               AND wait_event_type = 'Lock'",
        )
        .fetch_optional(db)
        .await
        .unwrap();
        if let Some(pid) = pid {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "the read never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a read of the accounts list (never served from memory, so it reaches PostgreSQL).
fn read_accounts(app: &TestApp) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let request = app.http.get(format!("{}/v1/accounts", app.http_base));
    tokio::spawn(request.send())
}

/// Takes the lock every read of `accounts` waits for.
async fn lock_accounts(db: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut lock = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    lock
}

async fn assert_unavailable(response: reqwest::Response, when: &str) {
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        (status.as_u16(), problem["code"].as_str()),
        (503, Some("unavailable")),
        "{when}: {problem}"
    );
    assert_eq!(problem["status"], 503, "{when}: {problem}");
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "{when}"
    );
}

#[tokio::test]
async fn a_read_whose_session_postgres_ends_answers_unavailable() {
    let app = TestApp::spawn().await;
    let lock = lock_accounts(&app.db).await;
    let read = read_accounts(&app);
    let pid = blocked_read(&app.db).await;

    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(ended);
    let response = read.await.unwrap().unwrap();
    lock.rollback().await.unwrap();
    assert_unavailable(response, "session ended under the read").await;

    // The next read gets a new session.
    assert_eq!(app.http_get("/v1/accounts").await.status(), 200);
}

#[tokio::test]
async fn postgres_shutting_down_and_down_answers_reads_unavailable_and_they_recover() {
    let dir = std::env::temp_dir().join(format!(
        "tally-test-{}-pgstop-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut postgres = PostgresServer::start(&dir).unwrap();
    let app = TestApp::spawn_with_database(postgres.url("postgres")).await;

    // A read running when PostgreSQL shuts down (a restart, a failover).
    let lock = lock_accounts(&app.db).await;
    let read = read_accounts(&app);
    blocked_read(&app.db).await;
    fast_shutdown(&postgres.child);
    let response = read.await.unwrap().unwrap();
    assert_unavailable(response, "PostgreSQL shut down under the read").await;
    drop(lock);
    postgres.child.wait().unwrap();

    // A read while PostgreSQL is down: within the pool's acquire timeout (2 s), not a hang.
    let started = Instant::now();
    let response = app.http_get("/v1/accounts").await;
    let took = started.elapsed();
    assert_unavailable(response, "PostgreSQL down").await;
    assert!(took < Duration::from_secs(6), "took {took:?}");

    // Back by itself once PostgreSQL is: no service restart.
    postgres.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = app.http_get("/v1/accounts").await.status();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "reads never recovered: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// PostgreSQL's "fast" shutdown (SIGINT): every session is ended, its running statement
/// answered with `admin_shutdown`.
#[allow(unsafe_code)]
fn fast_shutdown(postmaster: &std::process::Child) {
    let pid = libc::pid_t::try_from(postmaster.id()).unwrap();
    // SAFETY: kill(2) on a pid we spawned and have not yet reaped.
    let rc = unsafe { libc::kill(pid, libc::SIGINT) };
    assert_eq!(rc, 0);
}
