//! A headless Chromium driven through chromedriver (WebDriver), for the console's tests.
//!
//! Each [`Browser`] starts its own chromedriver on a free loopback port and one Chromium
//! session with a fresh profile in a temporary folder. Nothing outlives it: chromedriver is
//! spawned with a parent-death signal tied to the test's thread, Chromium with one tied to
//! chromedriver (through `setpriv`), and drop SIGKILLs both by pid. The binaries come from
//! `TALLY_CHROMEDRIVER` / `TALLY_CHROMIUM` (`./dev test` installs Debian's `chromium-driver`
//! and `chromium` and sets them), else `/usr/bin`; when missing, starting fails loudly.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::child::{self, free_port};

/// How long chromedriver may take to answer `/status`, and Chromium to open a session (a cold
/// start on a busy 2-core machine takes a few seconds).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a wait looks at the page again.
const POLL: Duration = Duration::from_millis(100);
/// At most this many browsers at once in one test process: each Chromium takes a core and a
/// few hundred MB while it renders.
const MAX_BROWSERS: usize = 2;
static BROWSERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_BROWSERS);

/// Flags for Chromium on a closed network: no first-run UI, no background connections (the
/// network refuses them and Chromium retries), no GPU, no sandbox (we may be root).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
];

#[derive(thiserror::Error)]
pub enum BrowserError {
    #[error(
        "{what} not found at {path} ({source}); run `./dev test` (it installs Debian's chromium and chromium-driver) or set {var}"
    )]
    Missing {
        what: &'static str,
        path: PathBuf,
        var: &'static str,
        source: std::io::Error,
    },
    #[error("cannot start chromedriver: {0}")]
    Spawn(std::io::Error),
    #[error("chromedriver or Chromium did not start within {START_TIMEOUT:?}: {0}")]
    NotReady(String),
    #[error("Chromium did not open a WebDriver session: {source}; see {}", log.display())]
    Session {
        source: fantoccini::error::NewSessionError,
        log: PathBuf,
    },
    #[error("WebDriver command failed: {0}")]
    Command(#[from] fantoccini::error::CmdError),
    #[error("timed out after {timeout:?} waiting for {what}; last seen: {last}; page: {url}")]
    Timeout {
        what: String,
        timeout: Duration,
        last: String,
        url: String,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

// `unwrap()` in a test prints Debug: the message says more than the variant's fields.
impl std::fmt::Debug for BrowserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// One Chromium session and the chromedriver serving it.
#[derive(Debug)]
pub struct Browser {
    client: Client,
    driver: Option<Child>,
    /// Chromium's browser process, as chromedriver reported it (`goog:processID`).
    chromium_pid: Option<u32>,
    /// The profile and chromedriver's log; removed on drop, after the processes.
    dir: Option<tempfile::TempDir>,
    _slot: tokio::sync::SemaphorePermit<'static>,
}

/// `TALLY_CHROMEDRIVER`, else Debian's `/usr/bin/chromedriver`.
pub fn chromedriver_path() -> PathBuf {
    std::env::var_os("TALLY_CHROMEDRIVER")
        .map_or_else(|| PathBuf::from("/usr/bin/chromedriver"), PathBuf::from)
}

/// `TALLY_CHROMIUM`, else Debian's `/usr/bin/chromium`.
pub fn chromium_path() -> PathBuf {
    std::env::var_os("TALLY_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

fn require(what: &'static str, path: PathBuf, var: &'static str) -> Result<PathBuf, BrowserError> {
    match std::fs::metadata(&path) {
        Ok(_) => Ok(path),
        Err(source) => Err(BrowserError::Missing {
            what,
            path,
            var,
            source,
        }),
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session on a fresh profile.
    pub async fn start() -> Result<Browser, BrowserError> {
        let driver_bin = require("chromedriver", chromedriver_path(), "TALLY_CHROMEDRIVER")?;
        let chromium_bin = require("chromium", chromium_path(), "TALLY_CHROMIUM")?;
        let slot = BROWSERS
            .acquire()
            .await
            .map_err(|e| BrowserError::NotReady(e.to_string()))?;
        let dir = tempfile::Builder::new()
            .prefix("tally-browser-")
            .tempdir()?;
        let launcher = write_launcher(dir.path(), &chromium_bin)?;
        let port = free_port();
        let mut command = Command::new(&driver_bin);
        command
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Tied to the test's thread: chromedriver cannot outlive the test process.
        let mut driver =
            child::spawn_tied_to_parent(&mut command, None).map_err(BrowserError::Spawn)?;
        let client = match open_session(port, &mut driver, &launcher, dir.path()).await {
            Ok(client) => client,
            Err(e) => {
                // A Chromium it may have started dies with it (see `write_launcher`).
                let _ = driver.kill();
                let _ = driver.wait();
                // Kept: the error points at chromedriver's log in it.
                let _ = dir.keep();
                return Err(e);
            }
        };
        let mut browser = Browser {
            client,
            driver: Some(driver),
            chromium_pid: None,
            dir: Some(dir),
            _slot: slot,
        };
        browser.chromium_pid = browser
            .client
            .capabilities()
            .and_then(|c| c.get("goog:processID"))
            .and_then(Value::as_u64)
            .and_then(|pid| u32::try_from(pid).ok());
        Ok(browser)
    }

    /// The WebDriver client, for what the helpers below do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub async fn goto(&self, url: &str) -> Result<(), BrowserError> {
        Ok(self.client.goto(url).await?)
    }

    /// Runs `script` (a function body: it must `return` its result) in the page.
    pub async fn eval(&self, script: &str) -> Result<Value, BrowserError> {
        Ok(self.client.execute(script, Vec::new()).await?)
    }

    /// Runs `script` every 100 ms until `ready` accepts its result, or fails after `timeout`
    /// with the last result and the page's URL.
    pub async fn wait_js(
        &self,
        what: &str,
        timeout: Duration,
        script: &str,
        ready: impl Fn(&Value) -> bool,
    ) -> Result<Value, BrowserError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.eval(script).await {
                Ok(value) if ready(&value) => return Ok(value),
                Ok(value) => value.to_string(),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                let url = self
                    .client
                    .current_url()
                    .await
                    .map_or_else(|e| e.to_string(), |u| u.to_string());
                return Err(BrowserError::Timeout {
                    what: what.to_owned(),
                    timeout,
                    last,
                    url,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until an element matches `css`, and returns it.
    pub async fn wait_for(
        &self,
        css: &str,
        timeout: Duration,
    ) -> Result<fantoccini::elements::Element, BrowserError> {
        let script = format!("return document.querySelector({}) !== null;", json!(css));
        self.wait_js(&format!("an element `{css}`"), timeout, &script, |v| {
            v.as_bool() == Some(true)
        })
        .await?;
        Ok(self.client.find(Locator::Css(css)).await?)
    }

    /// How many elements match `css` now.
    pub async fn count(&self, css: &str) -> Result<usize, BrowserError> {
        Ok(self.client.find_all(Locator::Css(css)).await?.len())
    }

    /// The page's current DOM, serialised.
    pub async fn source(&self) -> Result<String, BrowserError> {
        Ok(self.client.source().await?)
    }

    /// A PNG of the viewport, written to each of `paths` (their folders are created).
    pub async fn screenshot(&self, paths: &[PathBuf]) -> Result<(), BrowserError> {
        let png = self.client.screenshot().await?;
        for path in paths {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, &png)?;
        }
        Ok(())
    }

    /// Ends the session (Chromium quits) before drop kills what is left.
    pub async fn close(self) -> Result<(), BrowserError> {
        Ok(self.client.clone().close().await?)
    }
}

/// A launcher script that runs Chromium with a parent-death signal, so Chromium dies with
/// chromedriver even when chromedriver is SIGKILLed (it does not otherwise).
fn write_launcher(dir: &Path, chromium: &Path) -> Result<PathBuf, BrowserError> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("chromium-launcher");
    let quoted = chromium.display().to_string().replace('\'', r"'\''");
    let script = format!(
        "#!/bin/sh\nif command -v setpriv >/dev/null; then exec setpriv --pdeathsig KILL -- '{quoted}' \"$@\"; fi\nexec '{quoted}' \"$@\"\n"
    );
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Waits for chromedriver on `port`, then opens a session on a fresh profile under `dir`.
async fn open_session(
    port: u16,
    driver: &mut Child,
    launcher: &Path,
    dir: &Path,
) -> Result<Client, BrowserError> {
    let url = format!("http://127.0.0.1:{port}");
    wait_driver_ready(&url, driver).await.map_err(|e| {
        BrowserError::NotReady(format!(
            "{e}; see {}",
            dir.join("chromedriver.log").display()
        ))
    })?;
    let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
    args.push(format!("--user-data-dir={}", dir.join("profile").display()));
    let mut capabilities = fantoccini::wd::Capabilities::new();
    capabilities.insert("browserName".into(), json!("chrome"));
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"binary": launcher.display().to_string(), "args": args}),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let mut builder = ClientBuilder::new(connector);
    builder.capabilities(capabilities);
    match tokio::time::timeout(START_TIMEOUT, builder.connect(&url)).await {
        Ok(client) => client.map_err(|source| BrowserError::Session {
            source,
            log: dir.join("chromedriver.log"),
        }),
        Err(_) => Err(BrowserError::NotReady(format!(
            "no session within {START_TIMEOUT:?}; see {}",
            dir.join("chromedriver.log").display()
        ))),
    }
}

/// Polls chromedriver's `/status` until it is ready; gives up early if it exited (its port
/// taken, a missing library).
async fn wait_driver_ready(url: &str, driver: &mut Child) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        if let Ok(Some(status)) = driver.try_wait() {
            return Err(format!("chromedriver exited ({status})"));
        }
        match http.get(format!("{url}/status")).send().await {
            Ok(response) => match response.json::<Value>().await {
                Ok(status) if status["value"]["ready"] == json!(true) => return Ok(()),
                Ok(status) => last = status.to_string(),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(POLL).await;
    }
    Err(last)
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium first: it is ours only while its command line names our profile (the pid
        // could have been reused after it quit).
        if let (Some(pid), Some(dir)) = (self.chromium_pid, &self.dir) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let profile = dir.path().display().to_string();
            if child::is_alive(pid) && String::from_utf8_lossy(&cmdline).contains(&profile) {
                kill(pid);
            }
        }
        if let Some(mut driver) = self.driver.take() {
            let _ = driver.kill();
            let _ = driver.wait();
        }
        // The profile goes last, once nothing writes to it: Chromium's helper processes exit
        // shortly after the browser process (within a second or two).
        if let Some(dir) = self.dir.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && naming(dir.path()) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Whether a running process names `dir` on its command line (Chromium and its helpers carry
/// the profile's path).
fn naming(dir: &Path) -> bool {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .any(|cmdline| String::from_utf8_lossy(&cmdline).contains(&needle))
}

/// SIGKILLs `pid`.
#[allow(unsafe_code)]
fn kill(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill has no memory-safety preconditions; the caller checked the pid is ours.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}
