//! Operator commands (`dlq`, `audit verify`, `projections`) work on PostgreSQL directly.

use anyhow::Context;
use clap::Args;
use platform::db::primary::{self, DatabaseUrl, TargetSessionAttrs};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

#[derive(Debug, Args)]
pub struct Database {
    /// PostgreSQL URL of the Tally database. Several hosts as libpq writes them (what
    /// `pg_autoctl show uri` prints) are accepted: `postgres://u:pw@h1:5432,h2:5432/tally?target_session_attrs=read-write`
    /// connects to the first host that is the primary.
    #[arg(
        long = "database-url",
        env = "TALLY_DATABASE_URL",
        default_value = "postgres://tally:tally@127.0.0.1:15432/tally",
        hide_default_value = true
    )]
    pub url: String,
}

impl Database {
    /// A small pool: these tools run one or two queries at a time. A short command, so it
    /// does not follow a failover: it connects to the primary of the moment.
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(self.options().await?)
            .await
            .context("cannot connect to PostgreSQL (--database-url / TALLY_DATABASE_URL)")
    }

    pub async fn connection(&self) -> anyhow::Result<PgConnection> {
        PgConnection::connect_with(&self.options().await?)
            .await
            .context("cannot connect to PostgreSQL (--database-url / TALLY_DATABASE_URL)")
    }

    /// The options of the host to use: the only one, or the first that takes the sessions
    /// `target_session_attrs` asks for.
    async fn options(&self) -> anyhow::Result<PgConnectOptions> {
        let url = DatabaseUrl::parse(&self.url)?;
        if url.hosts().len() == 1 && url.target() == TargetSessionAttrs::Any {
            return Ok(url.hosts()[0].clone());
        }
        let (index, conn) = primary::resolve(&url)
            .await
            .context("--database-url / TALLY_DATABASE_URL")?;
        let _ = conn.close().await;
        Ok(url.hosts()[index].clone())
    }
}
