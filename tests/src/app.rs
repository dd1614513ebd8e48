//! `TestApp`: the four services running in-process against this test's own database and
//! subject prefix, on the shared real servers.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use platform::nats::{StreamNames, Subjects};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::servers::Servers;

pub use crate::database::create_test_database;
pub use crate::tokens::{TEST_AUTH_ENV, TEST_AUTH_SECRET, admin_token, auth_flag, mint_token};

/// A unique subject prefix, so each test has its own subjects and streams.
pub fn unique_prefix() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t{}", &id[..12])
}

/// A NATS server (or cluster) of a test's own, with users: its URL (comma-separated, one per
/// node, for a cluster) and each user's password.
#[derive(Debug, Clone)]
pub struct NatsAccess {
    pub url: String,
    pub passwords: std::collections::HashMap<String, String>,
}

impl NatsAccess {
    pub fn password(&self, user: &str) -> String {
        self.passwords.get(user).cloned().unwrap_or_default()
    }

    /// Each node's URL, as `async_nats` takes several (one string is one address).
    pub fn urls(&self) -> Vec<String> {
        self.url.split(',').map(str::to_owned).collect()
    }

    /// A connection as `user`, with that user's inbox prefix (as the services use).
    pub async fn connect_as(&self, user: &str) -> async_nats::Client {
        async_nats::ConnectOptions::with_user_and_password(user.to_owned(), self.password(user))
            .custom_inbox_prefix(format!("_INBOX_{user}"))
            .connect(self.urls())
            .await
            .unwrap_or_else(|e| panic!("connect to {} as {user}: {e}", self.url))
    }
}

/// A service binary of a test (`command-service` ...), started with the test's flags; SIGKILLed
/// on drop if still running.
#[derive(Debug)]
pub struct ServiceProcess {
    pub name: String,
    /// Its `--ops-addr` port (the query-service: its `--http-addr` port, which serves
    /// `/readyz` too).
    pub port: u16,
    child: Option<std::process::Child>,
}

impl ServiceProcess {
    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// SIGTERM, as an orchestrator stops it (graceful shutdown); `exit_status` tells when it
    /// has stopped.
    pub fn terminate(&self) {
        if let Some(pid) = self.pid().and_then(|p| libc::pid_t::try_from(p).ok()) {
            #[allow(unsafe_code)]
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }

    /// Its exit status, once it has exited (`None` while it runs).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL: no drain, no unpin, no flush.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until `/readyz` answers 200 (panics after `timeout`, or if the process exits).
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(response) = http.get(format!("{}/readyz", self.base_url())).send().await
                && response.status() == 200
            {
                return;
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("{} exited before it was ready: {status}", self.name);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not ready within {timeout:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug)]
pub struct TestApp {
    pub servers: &'static Servers,
    pub db_name: String,
    pub db_url: String,
    /// A pool on this test's database, for assertions.
    pub db: PgPool,
    /// A plain NATS client, as a user would have.
    pub nats: async_nats::Client,
    pub jetstream: async_nats::jetstream::Context,
    pub subjects: Subjects,
    pub streams: StreamNames,
    /// `http://127.0.0.1:<port>` of the query-service.
    pub http_base: String,
    pub command_ops_addr: SocketAddr,
    pub projections_ops_addr: SocketAddr,
    pub process_manager_ops_addr: SocketAddr,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
    command_service: Option<(CancellationToken, JoinHandle<std::io::Result<()>>)>,
    projections: Option<(CancellationToken, JoinHandle<std::io::Result<()>>)>,
    process_manager: Option<(CancellationToken, JoinHandle<std::io::Result<()>>)>,
    /// Flags every service of this test gets, at spawn and at each restart.
    flags: Vec<String>,
    /// The NATS server with users this test runs on, if any (restarts connect there too).
    nats_access: Option<NatsAccess>,
}

impl TestApp {
    /// Starts command-service, projections, process-manager and query-service in this process.
    pub async fn spawn() -> TestApp {
        crate::init_test_logging();
        let servers = Servers::get();
        let db_name = create_test_database(servers).await;
        let prefix = unique_prefix();
        Self::spawn_with(servers, db_name, prefix).await
    }

    /// [`TestApp::spawn`] with `flags` added to every service's, at spawn and at each restart
    /// (e.g. `--nats-duplicate-window-ms=1000`, which every service applies to the streams).
    pub async fn spawn_with_flags(flags: &[&str]) -> TestApp {
        crate::init_test_logging();
        let servers = Servers::get();
        let db_name = create_test_database(servers).await;
        let db_url = servers.pg_url(&db_name);
        let flags = flags.iter().map(|f| (*f).to_owned()).collect();
        Self::spawn_full(servers, db_name, db_url, unique_prefix(), None, flags).await
    }

    /// The flags every service gets: this test's database, NATS and prefix.
    pub fn common_args(servers: &Servers, db_url: &str, prefix: &str) -> Vec<String> {
        vec![
            format!("--database-url={db_url}"),
            format!("--nats-url={}", servers.nats_url),
            format!("--subject-prefix={prefix}"),
            "--db-pool-max=8".to_owned(),
        ]
    }

    /// Starts the services on a database of the test's choosing (e.g. on a PostgreSQL server
    /// the test kills and restarts), with the shared NATS and a fresh prefix.
    pub async fn spawn_with_database(db_url: String) -> TestApp {
        crate::init_test_logging();
        let servers = Servers::get();
        Self::spawn_on(servers, "custom".to_owned(), db_url, unique_prefix()).await
    }

    async fn spawn_with(servers: &'static Servers, db_name: String, prefix: String) -> TestApp {
        let db_url = servers.pg_url(&db_name);
        Self::spawn_on(servers, db_name, db_url, prefix).await
    }

    /// Starts the services against a NATS server of the test's own that has users and
    /// permissions (`deploy/nats-server.conf`, so the prefix is `tally`); each service connects
    /// as its own user, and `nats` as `tally-client`.
    pub async fn spawn_with_nats(access: NatsAccess) -> TestApp {
        crate::init_test_logging();
        let servers = Servers::get();
        let db_name = create_test_database(servers).await;
        let db_url = servers.pg_url(&db_name);
        Self::spawn_full(
            servers,
            db_name,
            db_url,
            "tally".to_owned(),
            Some(access),
            Vec::new(),
        )
        .await
    }

    /// [`TestApp::spawn_with_nats`] with `flags` added to every service's (e.g.
    /// `--stream-replicas=3` on a cluster, whose URLs `access.url` lists).
    pub async fn spawn_with_nats_and_flags(access: NatsAccess, flags: &[&str]) -> TestApp {
        crate::init_test_logging();
        let servers = Servers::get();
        let db_name = create_test_database(servers).await;
        let db_url = servers.pg_url(&db_name);
        let flags = flags.iter().map(|f| (*f).to_owned()).collect();
        Self::spawn_full(
            servers,
            db_name,
            db_url,
            "tally".to_owned(),
            Some(access),
            flags,
        )
        .await
    }

    async fn spawn_on(
        servers: &'static Servers,
        db_name: String,
        db_url: String,
        prefix: String,
    ) -> TestApp {
        Self::spawn_full(servers, db_name, db_url, prefix, None, Vec::new()).await
    }

    async fn spawn_full(
        servers: &'static Servers,
        db_name: String,
        db_url: String,
        prefix: String,
        nats_access: Option<NatsAccess>,
        flags: Vec<String>,
    ) -> TestApp {
        let mut common = Self::common_args(servers, &db_url, &prefix);
        common.extend(flags.iter().cloned());
        if let Some(access) = &nats_access {
            for arg in &mut common {
                if arg.starts_with("--nats-url=") {
                    *arg = format!("--nats-url={}", access.url);
                }
            }
        }
        let user_args = |name: &str| -> Vec<String> {
            nats_access
                .as_ref()
                .map(|a| {
                    vec![
                        format!("--nats-user={name}"),
                        format!("--nats-password={}", a.password(name)),
                    ]
                })
                .unwrap_or_default()
        };
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();

        let auth = format!("--auth-hs256-secret={TEST_AUTH_SECRET}");
        let args = |name: &str, extra: &str| {
            let checks_tokens = name != "projections";
            std::iter::once(name.to_owned())
                .chain(common.iter().cloned())
                .chain(user_args(name))
                .chain(checks_tokens.then(|| auth.clone()))
                .chain(std::iter::once(extra.to_owned()))
                .collect::<Vec<_>>()
        };

        let (command_ops_addr, command_service) = Self::start_command_service_with(
            &args("command-service", "--ops-addr=127.0.0.1:0"),
            &shutdown,
        )
        .await;

        let projections =
            projections::Config::try_parse_from(args("projections", "--ops-addr=127.0.0.1:0"))
                .expect("projections config");
        let projections = projections::Application::build(projections)
            .await
            .expect("projections starts");
        let projections_ops_addr = projections.ops_addr();
        let projections_token = shutdown.child_token();
        let projections_task = tokio::spawn(projections.run(projections_token.clone()));

        let (process_manager_ops_addr, process_manager) = Self::start_process_manager_with(
            &args("process-manager", "--ops-addr=127.0.0.1:0"),
            &shutdown,
        )
        .await;

        let query =
            query_service::Config::try_parse_from(args("query-service", "--http-addr=127.0.0.1:0"))
                .expect("query-service config");
        let query = query_service::Application::build(query)
            .await
            .expect("query-service starts");
        let http_base = format!("http://{}", query.http_addr());
        tasks.push(tokio::spawn(query.run(shutdown.child_token())));

        let db = PgPool::connect(&db_url).await.expect("test pool");
        let nats = match &nats_access {
            None => async_nats::connect(&servers.nats_url).await,
            Some(access) => {
                async_nats::ConnectOptions::with_user_and_password(
                    "tally-client".to_owned(),
                    access.password("tally-client"),
                )
                .custom_inbox_prefix("_INBOX_tally-client")
                .connect(access.urls())
                .await
            }
        }
        .expect("test NATS client");
        let subjects = Subjects::new(&prefix).expect("valid prefix");
        let streams = StreamNames::for_subjects(&subjects);
        TestApp {
            servers,
            db_name,
            db_url,
            db,
            jetstream: async_nats::jetstream::new(nats.clone()),
            nats,
            subjects,
            streams,
            http_base,
            command_ops_addr,
            projections_ops_addr,
            process_manager_ops_addr,
            http: reqwest::Client::builder()
                .default_headers(
                    [(
                        reqwest::header::AUTHORIZATION,
                        reqwest::header::HeaderValue::from_str(&format!(
                            "Bearer {}",
                            admin_token()
                        ))
                        .expect("header value"),
                    )]
                    .into_iter()
                    .collect(),
                )
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
            shutdown,
            tasks,
            command_service: Some(command_service),
            projections: Some((projections_token, projections_task)),
            process_manager: Some(process_manager),
            flags,
            nats_access,
        }
    }

    async fn start_process_manager_with(
        args: &[String],
        parent: &CancellationToken,
    ) -> (
        SocketAddr,
        (CancellationToken, JoinHandle<std::io::Result<()>>),
    ) {
        let config = process_manager::Config::try_parse_from(args).expect("process-manager config");
        let app = process_manager::Application::build(config)
            .await
            .expect("process-manager starts");
        let addr = app.ops_addr();
        let token = parent.child_token();
        let task = tokio::spawn(app.run(token.clone()));
        (addr, (token, task))
    }

    /// Starts the in-process process manager again.
    pub async fn start_process_manager(&mut self) {
        assert!(self.process_manager.is_none(), "already running");
        let args: Vec<String> = std::iter::once("process-manager".to_owned())
            .chain(self.service_flags_as("process-manager"))
            .chain([
                "--ops-addr=127.0.0.1:0".to_owned(),
                format!("--auth-hs256-secret={TEST_AUTH_SECRET}"),
            ])
            .collect();
        let (addr, service) = Self::start_process_manager_with(&args, &self.shutdown).await;
        self.process_manager_ops_addr = addr;
        self.process_manager = Some(service);
    }

    /// Stops the in-process process manager gracefully (as SIGTERM would).
    pub async fn stop_process_manager(&mut self) {
        if let Some((token, task)) = self.process_manager.take() {
            token.cancel();
            let result = tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("process-manager stops within 20 s");
            result.expect("no panic").expect("clean stop");
        }
    }

    async fn start_command_service_with(
        args: &[String],
        parent: &CancellationToken,
    ) -> (
        SocketAddr,
        (CancellationToken, JoinHandle<std::io::Result<()>>),
    ) {
        let config = command_service::Config::try_parse_from(args).expect("command-service config");
        let app = command_service::Application::build(config)
            .await
            .expect("command-service starts");
        let addr = app.ops_addr();
        let token = parent.child_token();
        let task = tokio::spawn(app.run(token.clone()));
        (addr, (token, task))
    }

    /// The command-service's flags for this test (database, NATS, prefix), plus `extra`.
    pub fn command_service_args(&self, extra: &[&str]) -> Vec<String> {
        std::iter::once("command-service".to_owned())
            .chain(self.service_flags_as("command-service"))
            .chain(std::iter::once("--ops-addr=127.0.0.1:0".to_owned()))
            .chain(std::iter::once(format!(
                "--auth-hs256-secret={TEST_AUTH_SECRET}"
            )))
            .chain(extra.iter().map(|s| (*s).to_owned()))
            .collect()
    }

    /// [`TestApp::service_flags`] of the service that connects as NATS user `user` when the
    /// test runs on a NATS server with users (its URL instead of the shared server's).
    fn service_flags_as(&self, user: &str) -> Vec<String> {
        let mut flags = self.service_flags();
        if let Some(access) = &self.nats_access {
            flags.retain(|f| !f.starts_with("--nats-url="));
            flags.extend([
                format!("--nats-url={}", access.url),
                format!("--nats-user={user}"),
                format!("--nats-password={}", access.password(user)),
            ]);
        }
        flags
    }

    /// Starts another instance of service `name` as its real binary (so a test can SIGKILL
    /// it), with this test's flags (database, NATS and its user, prefix, the test's extra
    /// flags), the test token secret, a free ops (query-service: HTTP) port, and `extra`.
    /// Its logs show (on the test's output) when `TEST_LOG` is set. Call
    /// [`ServiceProcess::wait_ready`].
    pub fn start_binary(&self, name: &str, extra: &[&str]) -> ServiceProcess {
        let port = crate::child::free_port();
        let addr_flag = if name == "query-service" {
            "--http-addr"
        } else {
            "--ops-addr"
        };
        let logs = std::env::var_os("TEST_LOG").is_some();
        let mut command = std::process::Command::new(crate::binaries::workspace_binary(name));
        command
            .args(self.service_flags_as(name))
            .arg(format!("{addr_flag}=127.0.0.1:{port}"))
            .args(extra)
            .env(
                crate::tokens::TEST_AUTH_ENV.0,
                crate::tokens::TEST_AUTH_ENV.1,
            )
            .env("TALLY_LOG", if logs { "info" } else { "error" })
            .stdin(std::process::Stdio::null());
        if !logs {
            command
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
        }
        // Tied to this (the test's) thread: it cannot outlive the test process.
        let child = crate::child::spawn_tied_to_parent(&mut command, None)
            .unwrap_or_else(|e| panic!("{name} binary (cargo build --workspace --bins): {e}"));
        ServiceProcess {
            name: name.to_owned(),
            port,
            child: Some(child),
        }
    }

    /// Starts the in-process projections worker again.
    pub async fn start_projections(&mut self) {
        assert!(self.projections.is_none(), "already running");
        let args: Vec<String> = std::iter::once("projections".to_owned())
            .chain(self.service_flags_as("projections"))
            .chain(std::iter::once("--ops-addr=127.0.0.1:0".to_owned()))
            .collect();
        let config = projections::Config::try_parse_from(args).expect("projections config");
        let app = projections::Application::build(config)
            .await
            .expect("projections starts");
        self.projections_ops_addr = app.ops_addr();
        let token = self.shutdown.child_token();
        let task = tokio::spawn(app.run(token.clone()));
        self.projections = Some((token, task));
    }

    /// Stops the in-process projections worker gracefully (as SIGTERM would).
    pub async fn stop_projections(&mut self) {
        if let Some((token, task)) = self.projections.take() {
            token.cancel();
            let result = tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("projections stop within 20 s");
            result.expect("no panic").expect("clean stop");
        }
    }

    /// The flags of a service binary for this test (database, NATS, prefix), without argv[0].
    pub fn service_flags(&self) -> Vec<String> {
        let mut flags = Self::common_args(self.servers, &self.db_url, self.subjects.prefix());
        flags.extend(self.flags.iter().cloned());
        flags
    }

    /// Stops the in-process command-service gracefully (as SIGTERM would).
    pub async fn stop_command_service(&mut self) {
        if let Some((token, task)) = self.command_service.take() {
            token.cancel();
            let result = tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("command-service stops within 20 s");
            result.expect("no panic").expect("clean stop");
        }
    }

    /// Starts the in-process command-service again, with extra flags.
    pub async fn start_command_service(&mut self, extra: &[&str]) {
        self.start_command_service_adjusted(extra, |_| {}).await;
    }

    /// Starts the in-process command-service again, with extra flags and its parsed
    /// configuration changed by `adjust` (for the settings that are no flag, e.g. the relay's
    /// injected publish failure).
    pub async fn start_command_service_adjusted(
        &mut self,
        extra: &[&str],
        adjust: impl FnOnce(&mut command_service::Config),
    ) {
        assert!(self.command_service.is_none(), "already running");
        let mut config = command_service::Config::try_parse_from(self.command_service_args(extra))
            .expect("command-service config");
        adjust(&mut config);
        let app = command_service::Application::build(config)
            .await
            .expect("command-service starts");
        self.command_ops_addr = app.ops_addr();
        let token = self.shutdown.child_token();
        let task = tokio::spawn(app.run(token.clone()));
        self.command_service = Some((token, task));
    }

    /// GET on the query-service.
    pub async fn http_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.http_base))
            .send()
            .await
            .expect("query-service answers")
    }

    /// GET on the query-service with a command reply's consistency token, waiting up to the
    /// API's longest wait for the read model to reach it.
    pub async fn http_get_with_token(&self, path: &str, token: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.http_base))
            .header("Tally-Consistency-Token", token)
            .header("Tally-Wait-Ms", "5000")
            .send()
            .await
            .expect("query-service answers")
    }

    /// Stops every service gracefully and waits for each to return; returns their results.
    pub async fn stop(mut self) -> Vec<std::io::Result<()>> {
        self.shutdown.cancel();
        let mut results = Vec::new();
        let command = self.command_service.take().map(|(_, task)| task);
        let projections = self.projections.take().map(|(_, task)| task);
        let process_manager = self.process_manager.take().map(|(_, task)| task);
        for task in command
            .into_iter()
            .chain(projections)
            .chain(process_manager)
            .chain(self.tasks.drain(..))
        {
            match tokio::time::timeout(Duration::from_secs(15), task).await {
                Ok(Ok(result)) => results.push(result),
                Ok(Err(join)) => results.push(Err(std::io::Error::other(join.to_string()))),
                Err(_) => results.push(Err(std::io::Error::other("shutdown timed out"))),
            }
        }
        results
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
