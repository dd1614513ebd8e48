//! `tally dlq list|retry|drop`: events a projection gave up on, and the aggregates they hold
//! back. An operator tool, so it talks to PostgreSQL directly; the projection worker carries out
//! the retry or drop within a second and this command waits to report the outcome.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand};
use sqlx::PgConnection;

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Parked aggregates: the dead-lettered event, its error, how many events wait behind it.
    List(Target),
    /// Apply the dead-lettered event again (after fixing its cause), then those parked behind it.
    Retry(One),
    /// Skip the dead-lettered event for good and apply those parked behind it.
    Drop(One),
}

#[derive(Debug, Args)]
pub struct Target {
    #[command(flatten)]
    pub database: crate::database::Database,
    #[arg(long, default_value = "accounts")]
    pub projection: String,
}

#[derive(Debug, Args)]
pub struct One {
    #[command(flatten)]
    pub target: Target,
    /// The parked aggregate's id.
    #[arg(long)]
    pub aggregate: String,
    /// How long to wait for the worker to carry it out.
    #[arg(long = "wait-ms", default_value_t = 15_000)]
    pub wait_ms: u64,
}

#[allow(clippy::print_stdout)]
pub async fn run(command: DlqCommand, json: bool) -> anyhow::Result<bool> {
    match command {
        DlqCommand::List(target) => {
            let mut db = connect(&target).await?;
            let rows: Vec<(String, String, i64, String, i32, String, i64)> = sqlx::query_as(
                "SELECT p.aggregate_type, p.aggregate_id, p.sequence, p.error, p.attempts,
                        p.parked_at::text,
                        (SELECT count(*) FROM projection_parked_events e
                          WHERE e.projection = p.projection AND e.aggregate_type = p.aggregate_type
                            AND e.aggregate_id = p.aggregate_id)
                 FROM projection_parked p WHERE p.projection = $1 ORDER BY p.parked_at",
            )
            .bind(&target.projection)
            .fetch_all(&mut db)
            .await?;
            for (kind, id, sequence, error, attempts, parked_at, waiting) in rows {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"aggregate_type": kind, "aggregate_id": id, "sequence": sequence,
                            "error": error, "attempts": attempts, "parked_at": parked_at, "waiting": waiting})
                    );
                } else {
                    println!(
                        "{kind} {id} #{sequence}  ({waiting} waiting, {attempts} attempts, since {parked_at})\n    {error}"
                    );
                }
            }
            Ok(true)
        }
        DlqCommand::Retry(one) => act(one, "retry").await,
        DlqCommand::Drop(one) => act(one, "drop").await,
    }
}

async fn connect(target: &Target) -> anyhow::Result<PgConnection> {
    target.database.connection().await
}

#[allow(clippy::print_stdout)]
async fn act(one: One, action: &str) -> anyhow::Result<bool> {
    let mut db = connect(&one.target).await?;
    let updated = sqlx::query(
        "UPDATE projection_parked SET action = $3 WHERE projection = $1 AND aggregate_id = $2",
    )
    .bind(&one.target.projection)
    .bind(&one.aggregate)
    .bind(action)
    .execute(&mut db)
    .await?
    .rows_affected();
    if updated == 0 {
        bail!(
            "{} is not parked in projection {}",
            one.aggregate,
            one.target.projection
        );
    }
    let deadline = Instant::now() + Duration::from_millis(one.wait_ms);
    loop {
        let row: Option<(Option<String>, String)> = sqlx::query_as(
            "SELECT action, error FROM projection_parked WHERE projection = $1 AND aggregate_id = $2",
        )
        .bind(&one.target.projection)
        .bind(&one.aggregate)
        .fetch_optional(&mut db)
        .await?;
        match row {
            None => {
                println!(
                    "{action}: {} released; its events are applied",
                    one.aggregate
                );
                return Ok(true);
            }
            Some((None, error)) => {
                println!("{action} failed; {} stays parked: {error}", one.aggregate);
                return Ok(false);
            }
            Some((Some(_), _)) if Instant::now() >= deadline => {
                bail!(
                    "the projection worker did not act within {} ms (is it running?)",
                    one.wait_ms
                )
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
