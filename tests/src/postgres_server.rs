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
}

impl PostgresServer {
    /// The superuser URL for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn start(dir: &Path) -> Result<PostgresServer, String> {
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
        let log = std::fs::File::create(dir.join("postgres.log")).map_err(|e| e.to_string())?;
        let mut postgres = Command::new(bindir.join("postgres"));
        postgres
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            // Loopback only, no Unix socket; durability off because a test cluster is thrown
            // away (speed matters, crash safety of the test cluster does not).
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
            ])
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(["-c", "max_connections=500", "-c", "shared_buffers=128MB"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = child::spawn_tied_to_parent(&mut postgres, run_as)
            .map_err(|e| format!("cannot start postgres: {e}"))?;

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
                return Ok(PostgresServer { child, port });
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "PostgreSQL did not become ready within 30 s; see {}",
                    dir.join("postgres.log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
