//! Following the PostgreSQL primary across a failover, for a pool sqlx can only point at one
//! host (sqlx 0.8 has no multi-host URL: transact-rs/sqlx#3333).
//!
//! `TALLY_DATABASE_URL` may list several hosts the way libpq does, which is what
//! `pg_autoctl show uri` prints: `postgres://user:pw@h1:5432,h2:5432/tally?target_session_attrs=read-write`.
//! [`DatabaseUrl`] parses that into one set of connect options per host; [`resolve`] finds the
//! first host that takes the session asked for (`pg_is_in_recovery()` false for `read-write` and
//! `primary`); [`follow`] keeps watching it and moves the pool to the new primary when it is gone
//! or demoted. See docs/design/following-the-primary.md.

use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Connection, PgConnection};
use tokio::sync::Notify;

/// How often the follower asks the current host whether it is still the primary: a failover
/// is noticed within about this long (plus the time until some host is promoted). One
/// `SELECT` a second on a connection kept open for it.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// While no host takes read-write sessions (the old primary gone, the standby not yet
/// promoted), the hosts are asked again this often, so the new primary is used within this
/// long of its promotion.
pub const RESOLVE_RETRY_EVERY: Duration = Duration::from_millis(200);
/// Longest wait for one host to connect and answer: a host that is unreachable (rather than
/// refusing) must not hold up asking the next one.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// While no primary is found, the warning is repeated at most this often.
const NO_PRIMARY_LOG_EVERY: Duration = Duration::from_secs(10);
/// A URL lists at most this many hosts (each is probed in turn on every failover).
pub const HOSTS_MAX: usize = 16;

/// libpq's `target_session_attrs`, the values a service that writes can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    /// The first host that answers (libpq's default).
    Any,
    /// A host that is not in recovery and whose sessions are not read-only by default.
    ReadWrite,
    /// A host that is not in recovery.
    Primary,
}

impl TargetSessionAttrs {
    fn name(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::Primary => "primary",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("TALLY_DATABASE_URL must start with postgres:// or postgresql://")]
    Scheme,
    #[error("TALLY_DATABASE_URL lists {0} hosts; at most {HOSTS_MAX} are allowed")]
    TooManyHosts(usize),
    #[error("TALLY_DATABASE_URL has an empty host in its host list")]
    EmptyHost,
    #[error(
        "target_session_attrs={0} is not supported: use any, read-write or primary (Tally writes)"
    )]
    TargetSessionAttrs(String),
    /// The URL as sqlx reads it, for host number `host` (0-based); never prints the URL.
    #[error("TALLY_DATABASE_URL is not a valid PostgreSQL URL (host {host})")]
    Invalid {
        host: usize,
        #[source]
        source: sqlx::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No host takes the sessions asked for; `reasons` says why, host by host (never the
    /// password).
    #[error("no PostgreSQL host takes {target} sessions: {reasons}")]
    NoHost {
        target: &'static str,
        reasons: String,
    },
}

/// A database URL with one or more hosts, as libpq reads it.
#[derive(Debug, Clone)]
pub struct DatabaseUrl {
    /// One set of connect options per listed host, in the URL's order, identical but for the
    /// host and port.
    hosts: Vec<PgConnectOptions>,
    target: TargetSessionAttrs,
}

impl DatabaseUrl {
    /// Reads `postgres://[user[:pw]@]h1[:p1][,h2[:p2]...][/db][?params]`. `target_session_attrs`
    /// is taken out (sqlx does not know it); other parameters are sqlx's to read (`sslmode` and
    /// the like; ones it does not know it ignores with a warning).
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = url.split_once("://").ok_or(UrlError::Scheme)?;
        if scheme != "postgres" && scheme != "postgresql" {
            return Err(UrlError::Scheme);
        }
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (userinfo, host_list) = match authority.rfind('@') {
            Some(at) => authority.split_at(at + 1),
            None => ("", authority),
        };
        let (path, query) = match tail.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (tail, None),
        };
        let mut target = TargetSessionAttrs::Any;
        let mut kept = Vec::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("target_session_attrs", value)) => {
                    target = match value {
                        "any" => TargetSessionAttrs::Any,
                        "read-write" => TargetSessionAttrs::ReadWrite,
                        "primary" => TargetSessionAttrs::Primary,
                        other => return Err(UrlError::TargetSessionAttrs(other.to_owned())),
                    }
                }
                _ if pair.is_empty() => {}
                _ => kept.push(pair),
            }
        }
        let query = if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        };
        let hosts: Vec<&str> = host_list.split(',').collect();
        if hosts.len() > HOSTS_MAX {
            return Err(UrlError::TooManyHosts(hosts.len()));
        }
        if hosts.len() > 1 && hosts.iter().any(|h| h.is_empty()) {
            return Err(UrlError::EmptyHost);
        }
        let hosts = hosts
            .iter()
            .enumerate()
            .map(|(host, address)| {
                let one = format!("{scheme}://{userinfo}{address}{path}{query}");
                PgConnectOptions::from_str(&one)
                    .map_err(|source| UrlError::Invalid { host, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DatabaseUrl { hosts, target })
    }

    /// The hosts' connect options, in the URL's order.
    pub fn hosts(&self) -> &[PgConnectOptions] {
        &self.hosts
    }

    pub fn target(&self) -> TargetSessionAttrs {
        self.target
    }

    /// The same URL with `change` applied to every host's options (session settings, the
    /// application name).
    #[must_use]
    pub fn map(mut self, change: impl Fn(PgConnectOptions) -> PgConnectOptions) -> Self {
        self.hosts = self.hosts.into_iter().map(change).collect();
        self
    }
}

/// `host:port` of a set of options, for logs and reasons.
pub fn address(options: &PgConnectOptions) -> String {
    format!("{}:{}", options.get_host(), options.get_port())
}

/// Whether this session is of the kind asked for. One round trip, or none for `any`.
pub async fn accepts(
    conn: &mut PgConnection,
    target: TargetSessionAttrs,
) -> Result<bool, sqlx::Error> {
    if target == TargetSessionAttrs::Any {
        return Ok(true);
    }
    let (in_recovery, read_only): (bool, bool) = sqlx::query_as(
        "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'",
    )
    .fetch_one(conn)
    .await?;
    Ok(match target {
        TargetSessionAttrs::Any => true,
        TargetSessionAttrs::Primary => !in_recovery,
        TargetSessionAttrs::ReadWrite => !in_recovery && !read_only,
    })
}

/// Connects to `options` and checks the session is of the kind asked for: the connection if so.
async fn probe(
    options: &PgConnectOptions,
    target: TargetSessionAttrs,
) -> Result<Option<PgConnection>, sqlx::Error> {
    let mut conn = PgConnection::connect_with(options).await?;
    if accepts(&mut conn, target).await? {
        Ok(Some(conn))
    } else {
        let _ = conn.close().await;
        Ok(None)
    }
}

/// The first host, in the URL's order, that takes the sessions asked for, and a connection to
/// it (opened with that host's options from `url`).
pub async fn resolve(url: &DatabaseUrl) -> Result<(usize, PgConnection), ResolveError> {
    let mut reasons = Vec::new();
    for (index, options) in url.hosts.iter().enumerate() {
        let host = address(options);
        match tokio::time::timeout(PROBE_TIMEOUT, probe(options, url.target)).await {
            Ok(Ok(Some(conn))) => return Ok((index, conn)),
            Ok(Ok(None)) => reasons.push(format!("{host} is in recovery or read-only")),
            Ok(Err(error)) => reasons.push(format!("{host}: {error}")),
            Err(_) => reasons.push(format!(
                "{host}: no answer within {} ms",
                PROBE_TIMEOUT.as_millis()
            )),
        }
    }
    Err(ResolveError::NoHost {
        target: url.target.name(),
        reasons: reasons.join("; "),
    })
}

/// What the pool's callbacks and the follower share.
#[derive(Debug)]
pub struct Following {
    /// The pool's options per host.
    url: DatabaseUrl,
    /// The index of the host the pool connects to.
    current: AtomicUsize,
    /// When the pool was last moved to another host: connections older than that lead to the
    /// old one and are closed rather than handed out.
    switched_at: Mutex<Option<Instant>>,
    /// Wakes the follower at once (a new session was refused as a standby's).
    wake: Notify,
    /// The follower's own connection's application name.
    watch_name: String,
}

impl Following {
    /// Following `url`'s hosts, the pool on the first one until [`Following::starting_at`].
    pub fn new(url: DatabaseUrl, application_name: &str) -> Self {
        Following {
            url,
            current: AtomicUsize::new(0),
            switched_at: Mutex::new(None),
            wake: Notify::new(),
            watch_name: format!("{application_name}-primary-watch"),
        }
    }

    pub fn target(&self) -> TargetSessionAttrs {
        self.url.target
    }

    /// The options of the host the pool connects to now.
    pub fn current_options(&self) -> PgConnectOptions {
        self.url.hosts[self.current.load(Ordering::Acquire)].clone()
    }

    /// Whether a pooled connection this old was opened before the last switch (so to a host
    /// that is no longer the one to use).
    pub fn predates_switch(&self, age: Duration) -> bool {
        let switched_at = *self.switched_at.lock().unwrap_or_else(|p| p.into_inner());
        switched_at.is_some_and(|at| age > at.elapsed())
    }

    /// A new session was refused (a standby's): look again now rather than at the next tick.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn switch_to(&self, index: usize, pool: &PgPool) {
        let before = self.current.swap(index, Ordering::AcqRel);
        if before == index {
            return;
        }
        pool.set_connect_options(self.url.hosts[index].clone());
        *self.switched_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        tracing::warn!(
            from = %address(&self.url.hosts[before]),
            to = %address(&self.url.hosts[index]),
            "PostgreSQL primary moved; new connections go to the new one"
        );
    }

    /// The same, the pool connecting to host `index` to begin with.
    #[must_use]
    pub fn starting_at(self, index: usize) -> Self {
        self.current.store(index, Ordering::Release);
        self
    }

    /// The URL for the follower's own connection (its own `application_name`).
    pub fn watch_url(&self) -> DatabaseUrl {
        self.url
            .clone()
            .map(|o| o.application_name(&self.watch_name))
    }
}

/// Watches the host the pool uses every [`FOLLOW_EVERY`] (or at once when woken) and, once it
/// is gone or no longer takes the sessions asked for, finds the host that does and points the
/// pool there. Returns when the pool is closed (or with the runtime).
pub async fn follow(
    pool: PgPool,
    following: std::sync::Arc<Following>,
    watch: Option<PgConnection>,
) {
    let mut watch = watch;
    let watch_url = following.watch_url();
    let closed = pool.close_event();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            () = &mut closed => return,
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
            () = following.wake.notified() => {}
        }
        if let Some(conn) = watch.as_mut() {
            let answer =
                tokio::time::timeout(PROBE_TIMEOUT, accepts(conn, following.target())).await;
            if matches!(answer, Ok(Ok(true))) {
                continue;
            }
        }
        if let Some(conn) = watch.take() {
            // The host is gone or demoted; the connection may be dead, so no goodbye.
            drop(conn);
        }
        let mut warned_at: Option<Instant> = None;
        loop {
            match resolve(&watch_url).await {
                Ok((index, conn)) => {
                    following.switch_to(index, &pool);
                    watch = Some(conn);
                    if warned_at.is_some() {
                        tracing::info!(
                            primary = %address(&watch_url.hosts[index]),
                            "PostgreSQL primary found"
                        );
                    }
                    break;
                }
                Err(error) => {
                    if warned_at.is_none_or(|at| at.elapsed() >= NO_PRIMARY_LOG_EVERY) {
                        tracing::warn!(%error, "looking for the PostgreSQL primary");
                        warned_at = Some(Instant::now());
                    }
                    tokio::select! {
                        () = &mut closed => return,
                        () = tokio::time::sleep(RESOLVE_RETRY_EVERY) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn hosts(url: &DatabaseUrl) -> Vec<String> {
        url.hosts().iter().map(address).collect()
    }

    #[test]
    fn reads_what_pg_autoctl_show_uri_prints() {
        let url = DatabaseUrl::parse(
            "postgres://tally:secret@node1:5501,node2:5502/tally?target_session_attrs=read-write&sslmode=prefer",
        )
        .unwrap();
        assert_eq!(hosts(&url), ["node1:5501", "node2:5502"]);
        assert_eq!(url.target(), TargetSessionAttrs::ReadWrite);
        for options in url.hosts() {
            assert_eq!(options.get_username(), "tally");
            assert_eq!(options.get_database(), Some("tally"));
        }
    }

    #[test]
    fn a_single_host_reads_as_before() {
        let url = DatabaseUrl::parse("postgres://tally:tally@127.0.0.1:15432/tally").unwrap();
        assert_eq!(hosts(&url), ["127.0.0.1:15432"]);
        assert_eq!(url.target(), TargetSessionAttrs::Any);
        let url = DatabaseUrl::parse("postgresql://u@h/db?target_session_attrs=primary").unwrap();
        assert_eq!(hosts(&url), ["h:5432"]);
        assert_eq!(url.target(), TargetSessionAttrs::Primary);
    }

    #[test]
    fn ports_default_per_host_and_other_parameters_pass_through() {
        let url = DatabaseUrl::parse(
            "postgres://u:p@a,b:6000/db?sslmode=disable&target_session_attrs=any&application_name=x",
        )
        .unwrap();
        assert_eq!(hosts(&url), ["a:5432", "b:6000"]);
        assert_eq!(url.target(), TargetSessionAttrs::Any);
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        assert!(matches!(
            DatabaseUrl::parse("postgres://u@a,b/db?target_session_attrs=standby"),
            Err(UrlError::TargetSessionAttrs(_))
        ));
        assert!(matches!(
            DatabaseUrl::parse("mysql://u@a/db"),
            Err(UrlError::Scheme)
        ));
        assert!(matches!(
            DatabaseUrl::parse("postgres://u@a,,b/db"),
            Err(UrlError::EmptyHost)
        ));
        let many = vec!["h"; HOSTS_MAX + 1].join(",");
        assert!(matches!(
            DatabaseUrl::parse(&format!("postgres://u@{many}/db")),
            Err(UrlError::TooManyHosts(_))
        ));
        // The password never shows in an error.
        let error = DatabaseUrl::parse("postgres://u:hunter2@a:notaport,b/db").unwrap_err();
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        assert!(!text.contains("hunter2"), "{text}");
    }
}
