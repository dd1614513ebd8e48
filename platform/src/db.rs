//! The PostgreSQL pool (following the primary when the URL lists several hosts, see
//! [`primary`]) and the embedded migrations.

pub mod primary;

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::PostgresConfig;

/// A connection is recycled after this long, so a connection left in a bad state (see
/// docs/design/commands-on-own-task.md, the sqlx cancellation bug) cannot live forever.
const CONNECTION_LIFETIME_MAX: Duration = Duration::from_secs(30 * 60);
/// A pooled connection idle for this long is pinged before it is handed out.
const PING_WHEN_IDLE_FOR: Duration = Duration::from_millis(250);
/// The server ends any session left idle inside a transaction for this long.
const IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = 10_000;

/// During a rolling upgrade an older binary meets a database a newer one already migrated:
/// migrations only ever add, so the older one may run on the newer schema (`ignore_missing`).
static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> = std::sync::LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("../migrations");
    migrator.set_ignore_missing(true);
    migrator
});

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Url(#[from] primary::UrlError),
    #[error("cannot find the PostgreSQL primary")]
    Primary(#[source] primary::ResolveError),
    #[error("cannot connect to PostgreSQL")]
    Connect(#[source] sqlx::Error),
    #[error("database migrations failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// The URL's hosts, each with Tally's per-session limits and `application_name`.
pub fn database_url(
    config: &PostgresConfig,
    application_name: &str,
) -> Result<primary::DatabaseUrl, DbError> {
    let statement_timeout = config.statement_timeout_ms.to_string();
    let idle_timeout = IDLE_IN_TRANSACTION_TIMEOUT_MS.to_string();
    Ok(
        primary::DatabaseUrl::parse(config.url.expose_secret())?.map(|options| {
            options.application_name(application_name).options([
                ("statement_timeout", statement_timeout.as_str()),
                ("idle_in_transaction_session_timeout", idle_timeout.as_str()),
            ])
        }),
    )
}

/// Connect options with Tally's per-session limits applied, for the first host the URL lists.
/// With several hosts, use the pool from [`connect`] (it follows the primary) or
/// [`session_options`] (where the pool connects now).
pub fn connect_options(
    config: &PostgresConfig,
    application_name: &str,
) -> Result<PgConnectOptions, DbError> {
    let url = database_url(config, application_name)?;
    Ok(url.hosts()[0].clone())
}

/// Options for a connection of its own to the host `pool` connects to now (the primary, when
/// the URL asks for one), named `application_name`. Take them again after losing the
/// connection: after a failover they lead elsewhere.
pub fn session_options(pool: &PgPool, application_name: &str) -> PgConnectOptions {
    (*pool.connect_options())
        .clone()
        .application_name(application_name)
}

/// Opens the pool and checks that one connection works.
///
/// With several hosts, or `target_session_attrs=read-write|primary`, it first finds the host
/// that takes such sessions (the primary), refuses any new session that does not (a standby's),
/// and, with several hosts, follows the primary on a task of its own (checked every
/// [`primary::FOLLOW_EVERY`]) until the pool is closed or the runtime stops. With one host and
/// no `target_session_attrs` the pool is as it always was.
pub async fn connect(config: &PostgresConfig, application_name: &str) -> Result<PgPool, DbError> {
    let url = database_url(config, application_name)?;
    let target = url.target();
    let several = url.hosts().len() > 1;
    if target == primary::TargetSessionAttrs::Any && !several {
        let options = url.hosts()[0].clone();
        return pool_options(config, None)
            .connect_with(options)
            .await
            .map_err(DbError::Connect);
    }
    let following = primary::Following::new(url, application_name);
    // The connection that finds the primary stays open as the follower's watch.
    let (current, watch) = primary::resolve(&following.watch_url())
        .await
        .map_err(DbError::Primary)?;
    let following = Arc::new(following.starting_at(current));
    let pool = pool_options(config, Some(Arc::clone(&following)))
        .connect_with(following.current_options())
        .await
        .map_err(DbError::Connect)?;
    if several {
        tokio::spawn(primary::follow(pool.clone(), following, Some(watch)));
    }
    Ok(pool)
}

fn pool_options(
    config: &PostgresConfig,
    following: Option<Arc<primary::Following>>,
) -> PgPoolOptions {
    let after_connect = following.clone();
    PgPoolOptions::new()
        .max_connections(config.pool_max)
        .acquire_timeout(config.acquire_timeout())
        .max_lifetime(CONNECTION_LIFETIME_MAX)
        .idle_timeout(Duration::from_secs(10 * 60))
        // sqlx already pings every connection when it is released (and closes one that does
        // not answer); a second ping on every acquire was one more round trip per statement.
        // Only a connection that sat idle is pinged: under load none does, and after a
        // PostgreSQL restart in a quiet moment the dead ones are replaced before use rather
        // than each failing one command with `unavailable`.
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            let following = following.clone();
            Box::pin(async move {
                // Opened before the pool moved to a new primary: it leads to the old one, which
                // is gone or a standby now. Closed rather than handed out (sqlx then opens one
                // to the new primary).
                if following.is_some_and(|f| f.predates_switch(meta.age)) {
                    return Ok(false);
                }
                if meta.idle_for >= PING_WHEN_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .after_connect(move |conn, _meta| {
            let following = after_connect.clone();
            Box::pin(async move {
                let Some(following) = following else {
                    return Ok(());
                };
                // No session on a standby is ever handed out when read-write is asked for:
                // sqlx retries (with the options the follower may have moved meanwhile)
                // until the acquire timeout.
                if primary::accepts(conn, following.target()).await? {
                    Ok(())
                } else {
                    following.wake();
                    Err(sqlx::Error::Configuration(
                        "the PostgreSQL host is in recovery or read-only, and target_session_attrs asks for read-write".into(),
                    ))
                }
            })
        })
}

/// Applies every pending migration. Safe to run from several services at once: sqlx holds an
/// advisory lock while it migrates.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await.map_err(DbError::Migrate)
}

/// The embedded migrations, for tools that report on them.
pub fn migrator() -> &'static sqlx::migrate::Migrator {
    &MIGRATOR
}

/// A cheap liveness query for readiness checks.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}
