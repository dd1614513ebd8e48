//! Operator commands (`dlq`, `audit verify`, `projections`) work on PostgreSQL directly.

use anyhow::Context;
use clap::Args;
use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};

#[derive(Debug, Args)]
pub struct Database {
    /// PostgreSQL URL of the Tally database.
    #[arg(
        long = "database-url",
        env = "TALLY_DATABASE_URL",
        default_value = "postgres://tally:tally@127.0.0.1:15432/tally",
        hide_default_value = true
    )]
    pub url: String,
}

impl Database {
    /// A small pool: these tools run one or two queries at a time.
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(&self.url)
            .await
            .context("cannot connect to PostgreSQL (--database-url / TALLY_DATABASE_URL)")
    }

    pub async fn connection(&self) -> anyhow::Result<PgConnection> {
        PgConnection::connect(&self.url)
            .await
            .context("cannot connect to PostgreSQL (--database-url / TALLY_DATABASE_URL)")
    }
}
