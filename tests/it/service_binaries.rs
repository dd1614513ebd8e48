//! The real binaries, as `./dev up` and Docker run them: start from flags/env, answer health,
//! and exit 0 on SIGTERM after draining.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::TestApp;
use tests::binaries::workspace_binary;
use tests::child::free_port;

async fn wait_healthy(http: &reqwest::Client, url: &str, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = http.get(url).send().await
            && response.status() == 200
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("service exited early with {status}");
        }
        assert!(Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[allow(unsafe_code)]
fn sigterm(child: &std::process::Child) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on a pid we spawned and have not yet reaped.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0);
}

#[tokio::test]
async fn each_binary_starts_serves_health_and_stops_on_sigterm() {
    let app = TestApp::spawn().await;
    for (binary, addr_flag) in [
        ("command-service", "--ops-addr"),
        ("projections", "--ops-addr"),
        ("process-manager", "--ops-addr"),
        ("query-service", "--http-addr"),
    ] {
        let port = free_port();
        let mut child = Command::new(workspace_binary(binary))
            .args(TestApp::common_args(
                app.servers,
                &app.db_url,
                app.subjects.prefix(),
            ))
            .arg(format!("{addr_flag}=127.0.0.1:{port}"))
            .env(tests::app::TEST_AUTH_ENV.0, tests::app::TEST_AUTH_ENV.1)
            .env("TALLY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{binary} not built ({e}); run `cargo build --workspace`"));
        wait_healthy(
            &app.http,
            &format!("http://127.0.0.1:{port}/healthz"),
            &mut child,
        )
        .await;
        sigterm(&child);
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{binary} ignored SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "{binary} exited with {status}");
    }
}

#[tokio::test]
async fn a_too_old_or_missing_dependency_is_a_clear_startup_error() {
    let port = free_port();
    let output = Command::new(workspace_binary("query-service"))
        .env(tests::app::TEST_AUTH_ENV.0, tests::app::TEST_AUTH_ENV.1)
        .arg(format!("--nats-url=nats://127.0.0.1:{port}"))
        .arg(format!(
            "--database-url={}",
            tests::Servers::get().pg_url("postgres")
        ))
        .arg("--nats-connect-timeout-ms=500")
        .arg("--http-addr=127.0.0.1:0")
        .env("TALLY_LOG", "error")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot connect to NATS"),
        "unclear error: {stderr}"
    );
}
