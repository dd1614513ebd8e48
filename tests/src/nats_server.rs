//! A real nats-server with JetStream, on a free loopback port.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::binaries;
use crate::child::{self, free_port, wait_for_port};

#[derive(Debug)]
pub struct NatsServer {
    pub child: Child,
    pub port: u16,
    pub version: String,
}

impl NatsServer {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts `nats-server -js` with its storage under `dir`. Refuses servers older than 2.11.
    pub fn start(dir: &Path) -> Result<NatsServer, String> {
        Self::start_binary(&binaries::nats_server(), dir)
    }

    /// As [`NatsServer::start`], with an explicit binary.
    pub fn start_binary(bin: &Path, dir: &Path) -> Result<NatsServer, String> {
        Self::start_configured(bin, dir, None, &[])
    }

    /// As [`NatsServer::start`], with a configuration file and the environment it reads (users
    /// and permissions). The server dies with the thread that started it.
    pub fn start_with_config(
        dir: &Path,
        config: &Path,
        env: &[(String, String)],
    ) -> Result<NatsServer, String> {
        Self::start_configured(&binaries::nats_server(), dir, Some(config), env)
    }

    fn start_configured(
        bin: &Path,
        dir: &Path,
        config: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<NatsServer, String> {
        let bin = bin.to_path_buf();
        let version = Command::new(&bin)
            .arg("--version")
            .output()
            .map_err(|e| {
                format!(
                    "cannot run {} ({e}); run `./dev test` (it installs nats-server 2.15 into .dev/) or set TALLY_NATS_SERVER",
                    bin.display()
                )
            })?;
        let version = String::from_utf8_lossy(&version.stdout)
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_owned();
        if !platform::nats::version_at_least(&version, platform::nats::SERVER_VERSION_MIN) {
            return Err(format!(
                "{} is nats-server {version}; Tally needs 2.11 or newer (Debian's 2.9 silently ignores JetStream features). Run `./dev test` to install 2.15 into .dev/",
                bin.display()
            ));
        }
        let port = free_port();
        let store = dir.join("nats");
        std::fs::create_dir_all(&store).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("nats.log")).map_err(|e| e.to_string())?;
        let mut command = Command::new(&bin);
        if let Some(config) = config {
            command.arg("-c").arg(config);
        }
        command.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = child::spawn_tied_to_parent(&mut command, None)
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        if !wait_for_port(port, Duration::from_secs(20)) {
            return Err(format!(
                "nats-server did not listen on {port} within 20 s; see {}",
                dir.join("nats.log").display()
            ));
        }
        Ok(NatsServer {
            child,
            port,
            version,
        })
    }
}
