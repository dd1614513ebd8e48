//! The servers shared by every test in one process, started on first use.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::mpsc;

use crate::child;
use crate::nats_server::NatsServer;
use crate::postgres_server::PostgresServer;

/// What tests need to reach the shared servers.
#[derive(Debug, Clone)]
pub struct Servers {
    pub nats_url: String,
    pub nats_pid: u32,
    pub nats_version: String,
    pub pg_port: u16,
    pub pg_pid: u32,
    /// Logs and data of this run's servers.
    pub dir: PathBuf,
}

impl Servers {
    /// Superuser URL of database `db`.
    pub fn pg_url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.pg_port)
    }

    /// The servers, started once per process. Panics with the reason if they cannot start.
    pub fn get() -> &'static Servers {
        static SERVERS: OnceLock<Result<Servers, String>> = OnceLock::new();
        match SERVERS.get_or_init(start) {
            Ok(servers) => servers,
            Err(reason) => panic!("test servers unavailable: {reason}"),
        }
    }
}

const DIR_PREFIX: &str = "tally-test-";

/// Removes server directories left by test processes that no longer run.
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !child::is_alive(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn start() -> Result<Servers, String> {
    sweep_stale_dirs();
    let dir = std::env::temp_dir().join(format!(
        "{DIR_PREFIX}{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Readable by the unprivileged PostgreSQL user when we run as root.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));

    // The children's parent-death signal fires when the spawning *thread* exits, so they are
    // spawned from a thread that parks forever instead of from a test thread.
    let (tx, rx) = mpsc::channel();
    let thread_dir = dir.clone();
    std::thread::Builder::new()
        .name("tally-test-servers".into())
        .spawn(move || {
            let started = NatsServer::start(&thread_dir)
                .and_then(|nats| PostgresServer::start(&thread_dir).map(|pg| (nats, pg)));
            match started {
                Ok((nats, pg)) => {
                    let servers = Servers {
                        nats_url: nats.url(),
                        nats_pid: nats.child.id(),
                        nats_version: nats.version.clone(),
                        pg_port: pg.port,
                        pg_pid: pg.child.id(),
                        dir: thread_dir,
                    };
                    let _ = tx.send(Ok(servers));
                    // Keep the children (and this thread) alive for the life of the process.
                    let _keep = (nats, pg);
                    loop {
                        std::thread::park();
                    }
                }
                Err(reason) => {
                    let _ = tx.send(Err(reason));
                }
            }
        })
        .map_err(|e| e.to_string())?;
    rx.recv().map_err(|e| e.to_string())?
}
