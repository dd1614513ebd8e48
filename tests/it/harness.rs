//! The harness itself: real servers, isolation between tests, nothing left behind.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::child::is_alive;
use tests::{Servers, TestApp};

#[tokio::test]
async fn servers_are_real_and_recent_enough() {
    let servers = Servers::get();
    assert!(
        platform::nats::version_at_least(&servers.nats_version, platform::nats::SERVER_VERSION_MIN),
        "nats-server {} is too old",
        servers.nats_version
    );
    let app = TestApp::spawn().await;
    assert!(app.nats.server_info().jetstream, "JetStream is off");
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(!version.is_empty());
    // Both listen on loopback only.
    assert!(servers.nats_url.starts_with("nats://127.0.0.1:"));
    let listen: String = sqlx::query_scalar("SHOW listen_addresses")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(listen, "127.0.0.1");
}

#[tokio::test]
async fn each_test_gets_its_own_database_and_streams() {
    let a = TestApp::spawn().await;
    let b = TestApp::spawn().await;
    assert_ne!(a.db_name, b.db_name);
    assert_ne!(a.streams.events, b.streams.events);

    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('account', 'only-in-a', 1, 'AccountOpened', '1.0', '{}', '{}')",
    )
    .execute(&a.db)
    .await
    .unwrap();
    let in_b: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&b.db)
        .await
        .unwrap();
    assert_eq!(in_b, 0, "a test saw another test's rows");

    a.jetstream
        .publish(a.subjects.event("account", "x"), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut stream_b = b.jetstream.get_stream(&b.streams.events).await.unwrap();
    assert_eq!(stream_b.info().await.unwrap().state.messages, 0);
}

/// Child half of `servers_die_with_the_test_process`: starts the servers, reports their pids,
/// then waits to be killed.
#[test]
#[ignore = "run only as a child of servers_die_with_the_test_process"]
fn harness_child_process() {
    if std::env::var_os("TALLY_HARNESS_CHILD").is_none() {
        return;
    }
    let servers = Servers::get();
    #[allow(clippy::print_stdout)] // the parent test reads this line
    {
        println!("PIDS {} {}", servers.nats_pid, servers.pg_pid);
    }
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn servers_die_with_the_test_process() {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "harness::harness_child_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TALLY_HARNESS_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let pids: Vec<u32> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            // libtest prints the test name on the same line, before our output.
            line.split_once("PIDS ")
                .map(|(_, rest)| rest.split(' ').filter_map(|p| p.parse().ok()).collect())
        })
        .expect("child reported its server pids");
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&pid| is_alive(pid)), "servers not running");

    // The harshest end: SIGKILL, no destructors, no atexit.
    child.kill().unwrap();
    child.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    while pids.iter().any(|&pid| is_alive(pid)) {
        assert!(
            Instant::now() < deadline,
            "servers outlived the killed test process: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_nats_server_older_than_2_11_is_refused_with_a_clear_message() {
    let dir = std::env::temp_dir().join(format!("tally-test-{}-oldnats", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("nats-server");
    // What Debian's package reports.
    std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.9.10'\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let refused = tests::nats_server::NatsServer::start_binary(&fake, &dir).unwrap_err();
    assert!(
        refused.contains("2.9.10") && refused.contains("2.11 or newer"),
        "{refused}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
