//! A real PostgreSQL cluster on a free loopback port, run as an unprivileged user when the
//! tests run as root (PostgreSQL refuses root).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::binaries;
use crate::child::{self, free_port};

#[derive(Debug)]
pub struct PostgresServer {
    pub child: Child,
    pub port: u16,
    data: std::path::PathBuf,
    log: std::path::PathBuf,
    durable: bool,
    /// More `postgres` arguments, kept across restarts (e.g. `synchronous_standby_names`).
    extra_args: Vec<String>,
}

impl PostgresServer {
    /// The superuser URL for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A throw-away cluster: durability off for speed (a crash of it may lose recent commits).
    pub fn start(dir: &Path) -> Result<PostgresServer, String> {
        Self::start_with(dir, false, Vec::new())
    }

    /// A cluster with PostgreSQL's default durability, for tests that crash it on purpose.
    pub fn start_durable(dir: &Path) -> Result<PostgresServer, String> {
        Self::start_with(dir, true, Vec::new())
    }

    /// A durable cluster whose commits return only once a streaming standby flushed them
    /// (`synchronous_standby_names = '*'`, `synchronous_commit = on`): an acknowledged commit
    /// survives the loss of this server. Writes block until [`PostgresServer::start_standby`]
    /// has a standby streaming from it.
    pub fn start_sync_primary(dir: &Path) -> Result<PostgresServer, String> {
        let extra_args = [
            "-c",
            "synchronous_standby_names=*",
            "-c",
            "synchronous_commit=on",
        ];
        Self::start_with(dir, true, extra_args.map(str::to_owned).to_vec())
    }

    /// A streaming hot standby of this server, copied by `pg_basebackup -R` (which writes
    /// `standby.signal` and `primary_conninfo`) into `dir`, durable, on a port of its own.
    pub fn start_standby(&self, dir: &Path) -> Result<PostgresServer, String> {
        let bindir = binaries::postgres_bindir();
        let run_as = child::unprivileged_user_if_root();
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| e.to_string())?;
        if let Some(user) = run_as {
            std::os::unix::fs::chown(&data, Some(user.uid), Some(user.gid))
                .map_err(|e| format!("chown {}: {e}", data.display()))?;
        }
        let mut basebackup = Command::new(bindir.join("pg_basebackup"));
        basebackup
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg("-D")
            .arg(&data)
            .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let output = child::spawn_tied_to_parent(&mut basebackup, run_as)
            .and_then(Child::wait_with_output)
            .map_err(|e| format!("cannot run pg_basebackup: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let port = free_port();
        let log = dir.join("postgres.log");
        let child = launch(&data, port, &log, true, &[])?;
        Ok(PostgresServer {
            child,
            port,
            data,
            log,
            durable: true,
            extra_args: Vec::new(),
        })
    }

    /// `pg_ctl promote` on a standby; returns once it takes writes.
    pub fn promote(&self) -> Result<(), String> {
        let bindir = binaries::postgres_bindir();
        let mut promote = Command::new(bindir.join("pg_ctl"));
        promote
            .arg("promote")
            .arg("-w")
            .arg("-D")
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let output = child::spawn_tied_to_parent(&mut promote, child::unprivileged_user_if_root())
            .and_then(Child::wait_with_output)
            .map_err(|e| format!("cannot run pg_ctl promote: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl promote failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// Stops the server cleanly (SIGINT: PostgreSQL's fast shutdown, which ends every session)
    /// and waits for it to exit; [`PostgresServer::restart`] starts it again.
    pub fn stop(&mut self) -> Result<(), String> {
        let pid = self.child.id();
        // SAFETY: plain kill(2) on our own child's pid.
        #[allow(unsafe_code)]
        let sent = unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
        if sent != 0 {
            return Err(format!("cannot signal postgres {pid}"));
        }
        self.child
            .wait()
            .map(|_| ())
            .map_err(|e| format!("waiting for postgres {pid}: {e}"))
    }

    fn start_with(
        dir: &Path,
        durable: bool,
        extra_args: Vec<String>,
    ) -> Result<PostgresServer, String> {
        let bindir = binaries::postgres_bindir();
        let run_as = child::unprivileged_user_if_root();
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| e.to_string())?;
        if let Some(user) = run_as {
            std::os::unix::fs::chown(&data, Some(user.uid), Some(user.gid))
                .map_err(|e| format!("chown {}: {e}", data.display()))?;
        }

        let mut initdb = Command::new(bindir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let output = child::spawn_tied_to_parent(&mut initdb, run_as)
            .and_then(Child::wait_with_output)
            .map_err(|e| {
                format!(
                    "cannot run {} ({e}); run `./dev test` (it installs PostgreSQL) or set TALLY_PG_BINDIR",
                    bindir.join("initdb").display()
                )
            })?;
        if !output.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }

        let port = free_port();
        let child = launch(&data, port, &dir.join("postgres.log"), durable, &extra_args)?;
        Ok(PostgresServer {
            child,
            port,
            data,
            log: dir.join("postgres.log"),
            durable,
            extra_args,
        })
    }

    /// Kills the server as a crash would (SIGKILL), and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Backends notice the postmaster's death and exit; wait until the port is free.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the same cluster again on the same port (crash recovery runs first).
    pub fn restart(&mut self) -> Result<(), String> {
        self.child = launch(
            &self.data,
            self.port,
            &self.log,
            self.durable,
            &self.extra_args,
        )?;
        Ok(())
    }
}

/// Runs `postgres` on an initialised data directory and waits until it accepts connections.
fn launch(
    data: &Path,
    port: u16,
    log_path: &Path,
    durable: bool,
    extra_args: &[String],
) -> Result<Child, String> {
    let bindir = binaries::postgres_bindir();
    let run_as = child::unprivileged_user_if_root();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| e.to_string())?;
    {
        let mut postgres = Command::new(bindir.join("postgres"));
        postgres
            .arg("-D")
            .arg(data)
            .args(["-p", &port.to_string()])
            // Loopback only, no Unix socket.
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
            ])
            .args(if durable {
                &[][..]
            } else {
                &[
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ][..]
            })
            .args(["-c", "max_connections=500", "-c", "shared_buffers=128MB"])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = child::spawn_tied_to_parent(&mut postgres, run_as)
            .map_err(|e| format!("cannot start postgres: {e}"))?;
        wait_ready(&bindir, port, log_path)?;
        Ok(child)
    }
}

fn wait_ready(bindir: &Path, port: u16, log_path: &Path) -> Result<(), String> {
    {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(bindir.join("pg_isready"))
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                ])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "PostgreSQL did not become ready within 30 s; see {}",
                    log_path.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
