//! The PostgreSQL pool and the embedded migrations.

use std::str::FromStr;
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
    #[error("TALLY_DATABASE_URL is not a valid PostgreSQL URL")]
    Url(#[source] sqlx::Error),
    #[error("cannot connect to PostgreSQL")]
    Connect(#[source] sqlx::Error),
    #[error("database migrations failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// Connect options with Tally's per-session limits applied.
pub fn connect_options(
    config: &PostgresConfig,
    application_name: &str,
) -> Result<PgConnectOptions, DbError> {
    let statement_timeout = config.statement_timeout_ms.to_string();
    let idle_timeout = IDLE_IN_TRANSACTION_TIMEOUT_MS.to_string();
    Ok(PgConnectOptions::from_str(config.url.expose_secret())
        .map_err(DbError::Url)?
        .application_name(application_name)
        .options([
            ("statement_timeout", statement_timeout.as_str()),
            ("idle_in_transaction_session_timeout", idle_timeout.as_str()),
        ]))
}

/// Opens the pool and checks that one connection works.
pub async fn connect(config: &PostgresConfig, application_name: &str) -> Result<PgPool, DbError> {
    let options = connect_options(config, application_name)?;
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
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_WHEN_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .map_err(DbError::Connect)
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
