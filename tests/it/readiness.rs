//! `/readyz` during an outage: every service answers within a second, 503, naming what is down,
//! while PostgreSQL is down and while NATS is down (a probe with a 1 s timeout that gets no
//! answer learns nothing). And after nats-server comes back, a service reconnects within a
//! fraction of a second rather than after async-nats's default backoff (up to 4 s).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};
use tests::TestApp;
use tests::postgres_server::PostgresServer;
use tokio_util::sync::CancellationToken;

/// What an orchestrator's probe typically waits.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

fn test_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tally-test-{}-{name}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `/readyz` at `url` answers within [`PROBE_TIMEOUT`] with 503 and a failed check `name`
/// giving a reason; returns the report.
async fn assert_not_ready_promptly(http: &reqwest::Client, url: &str, name: &str) -> Value {
    let started = Instant::now();
    let response = http
        .get(url)
        .timeout(PROBE_TIMEOUT)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: no answer within {PROBE_TIMEOUT:?}: {e}"));
    let took = started.elapsed();
    assert_eq!(response.status(), 503, "{url}");
    let report: Value = response.json().await.unwrap();
    assert!(took < PROBE_TIMEOUT, "{url} took {took:?}");
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{url}: no check {name}: {report}"));
    assert_eq!(check["ok"], false, "{url}: {report}");
    assert!(
        check["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{url}: {report}"
    );
    eprintln!("{url}: 503 in {} ms: {report}", took.as_millis());
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_within_a_second_while_postgres_is_down() {
    let dir = test_dir("ready-pg");
    let mut postgres = PostgresServer::start(&dir).unwrap();
    let app = TestApp::spawn_with_database(postgres.url("postgres")).await;
    let http = reqwest::Client::new();
    let urls: Vec<String> = [
        app.command_ops_addr,
        app.projections_ops_addr,
        app.process_manager_ops_addr,
    ]
    .iter()
    .map(|addr| format!("http://{addr}/readyz"))
    .chain(std::iter::once(format!("{}/readyz", app.http_base)))
    .collect();

    postgres.kill();
    // Twice each: the first probe after the crash, and one while the pools keep failing.
    for _ in 0..2 {
        for url in &urls {
            if url.contains(&app.process_manager_ops_addr.to_string()) {
                // The process manager never connects to PostgreSQL (ARCHITECTURE.md).
                let response = http.get(url).timeout(PROBE_TIMEOUT).send().await.unwrap();
                assert!(response.status().is_success() || response.status() == 503);
                continue;
            }
            assert_not_ready_promptly(&http, url, "postgres").await;
        }
    }
    postgres.restart().unwrap();
}

/// A nats-server on `port` (the same one across restarts), storing under `dir`.
fn start_nats(port: u16, dir: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("nats.log"))
        .unwrap();
    let mut command = Command::new(tests::binaries::nats_server());
    command
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.join("nats"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let child = tests::child::spawn_tied_to_parent(&mut command, None).unwrap();
    assert!(
        tests::child::wait_for_port(port, Duration::from_secs(20)),
        "nats-server did not listen on {port}"
    );
    child
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The four services, in this process, on the shared PostgreSQL (a database of their own) and
/// on NATS at `nats_url`; their `/readyz` URLs.
struct Services {
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    readyz: Vec<String>,
    prefix: String,
}

impl Services {
    async fn start(nats_url: &str, only_commands: bool) -> Services {
        tests::init_test_logging();
        let servers = tests::servers::Servers::get();
        let db = tests::app::create_test_database(servers).await;
        let prefix = tests::app::unique_prefix();
        let args = |name: &str, addr: &str| -> Vec<String> {
            vec![
                name.to_owned(),
                format!("--database-url={}", servers.pg_url(&db)),
                format!("--nats-url={nats_url}"),
                format!("--subject-prefix={prefix}"),
                "--db-pool-max=4".to_owned(),
                format!("--auth-hs256-secret={}", tests::app::TEST_AUTH_SECRET),
                addr.to_owned(),
            ]
        };
        let ops = "--ops-addr=127.0.0.1:0";
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let command = command_service::Config::try_parse_from(args("command-service", ops))
            .expect("command-service config");
        let command = command_service::Application::build(command).await.unwrap();
        addrs.push(command.ops_addr());
        tasks.push(tokio::spawn(command.run(shutdown.child_token())));
        if !only_commands {
            let mut projections_args = args("projections", ops);
            projections_args.retain(|a| !a.starts_with("--auth-hs256-secret"));
            let projections = projections::Config::try_parse_from(projections_args).unwrap();
            let projections = projections::Application::build(projections).await.unwrap();
            addrs.push(projections.ops_addr());
            tasks.push(tokio::spawn(projections.run(shutdown.child_token())));
            let manager =
                process_manager::Config::try_parse_from(args("process-manager", ops)).unwrap();
            let manager = process_manager::Application::build(manager).await.unwrap();
            addrs.push(manager.ops_addr());
            tasks.push(tokio::spawn(manager.run(shutdown.child_token())));
            let query = query_service::Config::try_parse_from(args(
                "query-service",
                "--http-addr=127.0.0.1:0",
            ))
            .unwrap();
            let query = query_service::Application::build(query).await.unwrap();
            addrs.push(query.http_addr());
            tasks.push(tokio::spawn(query.run(shutdown.child_token())));
        }
        Services {
            shutdown,
            tasks,
            readyz: addrs
                .iter()
                .map(|addr| format!("http://{addr}/readyz"))
                .collect(),
            prefix,
        }
    }

    async fn wait_ready(&self, http: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for url in &self.readyz {
            loop {
                let ok = http
                    .get(url)
                    .timeout(PROBE_TIMEOUT)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    break;
                }
                assert!(Instant::now() < deadline, "{url} never ready");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Stops them, a bounded while (NATS may be down: nothing to drain).
    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_within_a_second_while_nats_is_down() {
    let dir = test_dir("ready-nats");
    let port = tests::child::free_port();
    let mut nats = start_nats(port, &dir);
    let services = Services::start(&format!("nats://127.0.0.1:{port}"), false).await;
    let http = reqwest::Client::new();
    services.wait_ready(&http).await;

    kill(&mut nats);
    // The services notice the closed connection at once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..2 {
        for url in &services.readyz {
            assert_not_ready_promptly(&http, url, "nats").await;
        }
    }
    services.stop().await;
}

/// A command over NATS with the admin token; the reply's JSON, or `None` if none came.
async fn send_open(client: &async_nats::Client, prefix: &str, account: &str) -> Option<Value> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Authorization",
        format!("Bearer {}", tests::app::admin_token()).as_str(),
    );
    let body = json!({"account_id": account, "owner": "o", "currency": "EUR"});
    let reply = tokio::time::timeout(
        Duration::from_secs(2),
        client.request_with_headers(
            format!("{prefix}.cmd.account.open"),
            headers,
            serde_json::to_vec(&body).unwrap().into(),
        ),
    )
    .await
    .ok()?
    .ok()?;
    serde_json::from_slice(&reply.payload).ok()
}

/// While nats-server is down, the service's client knocks at most every ~0.5 s (a listener on
/// the port counts its attempts), so once the server is back a command is accepted within
/// about that long, not after async-nats's default pause (growing to 4 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_reconnects_to_nats_within_a_second_of_its_return() {
    let dir = test_dir("nats-back");
    let port = tests::child::free_port();
    let mut nats = start_nats(port, &dir);
    let services = Services::start(&format!("nats://127.0.0.1:{port}"), true).await;
    let http = reqwest::Client::new();
    services.wait_ready(&http).await;

    kill(&mut nats);
    // A stand-in on the port for 5 s: it takes each reconnect attempt and closes it, noting
    // when it came. 5 s is past where async-nats's default pause reaches its 4 s cap.
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let outage = Instant::now();
    let mut attempts = Vec::new();
    while outage.elapsed() < Duration::from_secs(5) {
        let left = Duration::from_secs(5).saturating_sub(outage.elapsed());
        if let Ok(Ok((socket, _))) = tokio::time::timeout(left, listener.accept()).await {
            attempts.push(outage.elapsed());
            drop(socket);
        }
    }
    drop(listener);
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    let widest = gaps.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{} reconnect attempts in 5 s, widest gap {} ms",
        attempts.len(),
        widest.as_millis()
    );
    assert!(attempts.len() >= 5, "attempts: {attempts:?}");
    assert!(
        widest <= Duration::from_millis(600),
        "reconnect attempts {} ms apart: {attempts:?}",
        widest.as_millis()
    );

    // Back: the next attempt comes within the cap, and commands go through again.
    let mut nats = start_nats(port, &dir);
    let back = Instant::now();
    let client = async_nats::connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    let mut n = 0;
    let took = loop {
        n += 1;
        let reply = send_open(&client, &services.prefix, &format!("back-{n}")).await;
        if reply.as_ref().is_some_and(|r| r["status"] == "accepted") {
            break back.elapsed();
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "no command accepted 10 s after NATS came back: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "command accepted {} ms after nats-server listened again",
        took.as_millis()
    );
    assert!(took < Duration::from_millis(1_500), "took {took:?}");
    services.stop().await;
    kill(&mut nats);
}
