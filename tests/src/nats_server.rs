//! A real nats-server with JetStream, on a free loopback port; or three of them in one cluster.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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

/// Cluster name of every test cluster (each test's cluster has its own ports, so they never meet).
const CLUSTER_NAME: &str = "tally-test";
/// How long a cluster may take to listen and elect a JetStream meta leader (about 3 s measured).
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One node of a [`NatsCluster`]: its ports stay the same across restarts.
#[derive(Debug)]
pub struct ClusterNode {
    pub name: String,
    pub port: u16,
    pub cluster_port: u16,
    pub monitor_port: u16,
    store: PathBuf,
    log: PathBuf,
    /// `None` while the node is down.
    child: Option<Child>,
}

impl ClusterNode {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The process id, while the node runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A request to the spawner thread: a command to spawn, and where to send the child.
type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Three nats-server nodes with JetStream in one cluster on loopback, each with its own store,
/// for tests that need replicated (R3) streams or that kill a node. The nodes are spawned by a
/// thread of the cluster's own that lives as long as the cluster, so their parent-death signal
/// fires when the cluster is dropped or the test process dies; drop also kills them by pid.
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<ClusterNode>,
    pub version: String,
    bin: PathBuf,
    config: Option<PathBuf>,
    env: Vec<(String, String)>,
    spawner: Option<mpsc::Sender<SpawnRequest>>,
    spawner_thread: Option<std::thread::JoinHandle<()>>,
}

impl NatsCluster {
    /// Starts three nodes under `dir` (one store and log each), with `config` (users and
    /// permissions, e.g. `deploy/nats-server.conf`) and the environment it reads, and waits
    /// until every node knows the JetStream meta leader.
    pub fn start(
        dir: &Path,
        config: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<NatsCluster, String> {
        let bin = binaries::nats_server();
        let version = server_version(&bin)?;
        let (spawner, requests) = mpsc::channel::<SpawnRequest>();
        let spawner_thread = std::thread::Builder::new()
            .name("tally-test-nats-cluster".into())
            .spawn(move || {
                // Lives until the cluster drops its sender: the children's parent-death signal
                // is tied to this thread.
                for (mut command, reply) in requests {
                    let _ = reply.send(child::spawn_tied_to_parent(&mut command, None));
                }
            })
            .map_err(|e| e.to_string())?;
        let nodes = (1..=3)
            .map(|n| ClusterNode {
                name: format!("n{n}"),
                port: free_port(),
                cluster_port: free_port(),
                monitor_port: free_port(),
                store: dir.join(format!("nats-n{n}")),
                log: dir.join(format!("nats-n{n}.log")),
                child: None,
            })
            .collect();
        let mut cluster = NatsCluster {
            nodes,
            version,
            bin,
            config: config.map(Path::to_path_buf),
            env: env.to_vec(),
            spawner: Some(spawner),
            spawner_thread: Some(spawner_thread),
        };
        for i in 0..cluster.nodes.len() {
            cluster.spawn_node(i)?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_node_ready(i)?;
        }
        Ok(cluster)
    }

    /// Every node's client URL, comma-separated (as `--nats-url` takes them).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(ClusterNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's client URL, as `async_nats::connect` takes them.
    pub fn url_list(&self) -> Vec<String> {
        self.nodes.iter().map(ClusterNode::url).collect()
    }

    /// The index of the node named `name` (as stream info names its leader).
    pub fn node_named(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// SIGKILLs node `i` (no lame duck, no leader hand-over) and reaps it.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its ports and store, and waits until it has rejoined (it knows
    /// the meta leader).
    pub fn restart_node(&mut self, i: usize) -> Result<(), String> {
        assert!(self.nodes[i].child.is_none(), "node {i} is running");
        self.spawn_node(i)?;
        self.wait_node_ready(i)
    }

    /// The node's `/jsz`, or why not.
    pub fn jsz(&self, i: usize) -> Result<serde_json::Value, String> {
        let body = http_get(self.nodes[i].monitor_port, "/jsz")?;
        serde_json::from_str(&body).map_err(|e| format!("/jsz is not JSON ({e}): {body}"))
    }

    fn spawn_node(&mut self, i: usize) -> Result<(), String> {
        let routes = self
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        let node = &self.nodes[i];
        std::fs::create_dir_all(&node.store).map_err(|e| e.to_string())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.bin);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(["-js", "-a", "127.0.0.1", "-p", &node.port.to_string()])
            .args(["-m", &node.monitor_port.to_string()])
            .args(["--server_name", &node.name, "--cluster_name", CLUSTER_NAME])
            .arg("--cluster")
            .arg(format!("nats://127.0.0.1:{}", node.cluster_port))
            .args(["--routes", &routes])
            .arg("-sd")
            .arg(&node.store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let (reply, child) = mpsc::channel();
        self.spawner
            .as_ref()
            .ok_or("cluster stopped")?
            .send((command, reply))
            .map_err(|e| e.to_string())?;
        let child = child
            .recv()
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// Waits until node `i` listens and reports a JetStream meta leader in `/jsz`.
    fn wait_node_ready(&self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.jsz(i) {
                Ok(jsz) => {
                    let leader = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
                    if !leader.is_empty() {
                        return Ok(());
                    }
                    last = format!("no meta leader yet: {}", jsz["meta_cluster"]);
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "nats-server {} had no JetStream meta leader within {CLUSTER_READY_TIMEOUT:?} ({last}); see {}",
            node.name,
            node.log.display()
        ))
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        // Ends the spawner thread (its queue closes).
        self.spawner.take();
        if let Some(thread) = self.spawner_thread.take() {
            let _ = thread.join();
        }
    }
}

/// `nats-server --version`, refused below 2.11.
fn server_version(bin: &Path) -> Result<String, String> {
    let output = Command::new(bin).arg("--version").output().map_err(|e| {
        format!(
            "cannot run {} ({e}); run `./dev install` or set TALLY_NATS_SERVER",
            bin.display()
        )
    })?;
    let version = String::from_utf8_lossy(&output.stdout)
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_owned();
    if !platform::nats::version_at_least(&version, platform::nats::SERVER_VERSION_MIN) {
        return Err(format!(
            "{} is nats-server {version}; Tally needs 2.11 or newer",
            bin.display()
        ));
    }
    Ok(version)
}

/// The body of `GET path` on the monitor port (HTTP/1.0, so the server closes when done);
/// bounded by a 2 s timeout on connect, read and write.
fn http_get(port: u16, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let timeout = Duration::from_secs(2);
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream =
        std::net::TcpStream::connect_timeout(&address, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .take(16 * 1024 * 1024)
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_owned())
        }
        _ => Err(format!(
            "GET {path}: {}",
            response.lines().next().unwrap_or_default()
        )),
    }
}
