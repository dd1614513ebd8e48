//! `tally-bench` (run by `./dev bench`): throughput figures against a real PostgreSQL started
//! here on loopback (durable settings: fsync on), reported as medians of several runs next to a
//! baseline measured in the same run, because the machine is shared and noisy.
//!
//! `audit`: generates N events (accounts of one `AccountOpened` and nine deposits, a tenth of
//! them stored as `MoneyDeposited` 1.0 so upcasting is on the path), hash-chained exactly as the
//! command-service writes them, then times, per run:
//! - baseline: streaming every event row through sqlx and decoding it, nothing else;
//! - rebuild: `projections::rebuild` of the accounts projection (shadow tables, swap);
//! - verify: `audit::verify` (every chain, every fold, every account against the read model).

mod commands;
mod generate;

use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::TryStreamExt;
use sqlx::{Connection, PgConnection, PgPool};

#[derive(Debug, Parser)]
#[command(
    name = "tally-bench",
    about = "Tally's benchmarks against real servers"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Rebuild and audit-verify throughput over a generated event store.
    Audit {
        /// Events to generate (rounded down to whole accounts of 10 events).
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Timed runs of each measurement; medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Command throughput and latency against the running `./dev up` stack.
    Commands(commands::CommandsArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Audit { events, runs } => audit(events, runs.max(1)).await,
        Scenario::Commands(args) => commands::run(args).await,
    }
}

#[allow(clippy::print_stdout)]
async fn audit(events: u64, runs: usize) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tally-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let server = tests::postgres_server::PostgresServer::start_durable(&dir)
        .map_err(anyhow::Error::msg)
        .context("starting PostgreSQL")?;
    let mut admin = PgConnection::connect(&server.url("postgres")).await?;
    sqlx::query("CREATE DATABASE bench")
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    let url = server.url("bench");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    platform::db::migrate(&pool).await?;

    let started = Instant::now();
    let generated = generate::events(&pool, events / 10).await?;
    let generate_s = started.elapsed().as_secs_f64();
    sqlx::query("VACUUM ANALYZE events").execute(&pool).await?;
    println!(
        "generated {generated} events ({} accounts) in {generate_s:.1}s ({:.0} events/s written)",
        generated / 10,
        generated as f64 / generate_s
    );

    let (mut baseline, mut rebuild, mut verify) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let t = Instant::now();
        let scanned = scan(&pool).await?;
        baseline.push(scanned as f64 / t.elapsed().as_secs_f64());

        let conn = PgConnection::connect(&url).await?;
        let t = Instant::now();
        let report = projections::rebuild::rebuild(&pool, conn, "accounts", |_| {}).await?;
        rebuild.push(report.events as f64 / t.elapsed().as_secs_f64());

        let t = Instant::now();
        let options = audit::verify::VerifyOptions {
            compare_read_model: true,
            findings_max: 10,
            ..Default::default()
        };
        let checked = audit::verify::verify(&pool, &options, |_| {}).await?;
        verify.push(checked.events as f64 / t.elapsed().as_secs_f64());
        if checked.findings_total > 0 || checked.read_models_compared != generated / 10 {
            bail!(
                "verify found problems in generated data: {:?} ({} compared)",
                checked.findings,
                checked.read_models_compared
            );
        }
        println!(
            "run {run}: baseline {:.0}, rebuild {:.0} (swap {} ms), verify {:.0} events/s",
            baseline[run - 1],
            rebuild[run - 1],
            report.swap_ms,
            verify[run - 1]
        );
    }
    let (b, r, v) = (median(&baseline), median(&rebuild), median(&verify));
    println!();
    println!("audit bench, {generated} events, median of {runs} runs (events/s):");
    println!("  baseline scan  {b:>10.0}  (stream + decode every row, no work)");
    println!(
        "  rebuild        {r:>10.0}  {:.2} x baseline   target >= 50000",
        r / b
    );
    println!(
        "  verify         {v:>10.0}  {:.2} x baseline   target >= 100000",
        v / b
    );
    drop(pool);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The floor: every event row read and decoded as audits read them.
async fn scan(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let sql = format!(
        "SELECT {} FROM events ORDER BY aggregate_type, aggregate_id, sequence",
        audit::stored_event::COLUMNS
    );
    let mut rows = sqlx::query_as::<_, audit::StoredEvent>(&sql).fetch(pool);
    let mut n = 0;
    while rows.try_next().await?.is_some() {
        n += 1;
    }
    Ok(n)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}
