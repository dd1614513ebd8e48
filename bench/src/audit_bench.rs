//! Rebuild and audit-verify throughput over a generated event store of N events, in a
//! PostgreSQL started here on loopback with durable settings (fsync on).
//!
//! The store: accounts of one `AccountOpened` and nine deposits, a tenth of them stored as
//! `MoneyDeposited` 1.0 so upcasting is on the path, hash-chained exactly as the command-service
//! writes them. Per run:
//! - baseline: streaming every event row through sqlx and decoding it, nothing else;
//! - rebuild: `projections::rebuild` of the accounts projection (shadow tables, swap);
//! - verify: `audit::verify` (every chain, every fold, every account against the read model).

use std::time::Instant;

use anyhow::{Context, bail};
use futures::TryStreamExt;
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};

use crate::generate;
use crate::stats::median;

#[derive(Debug, Clone, Serialize)]
pub struct AuditFigures {
    pub events: u64,
    pub scan_events_per_s: f64,
    pub rebuild_events_per_s: f64,
    pub verify_events_per_s: f64,
    pub swap_ms: u64,
}

#[allow(clippy::print_stdout)]
pub async fn run(events: u64, runs: usize) -> anyhow::Result<AuditFigures> {
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
    event_store::maintenance::vacuum_analyze(&pool).await?;
    println!(
        "audit: generated {generated} events ({} accounts) in {generate_s:.1}s ({:.0} events/s written)",
        generated / 10,
        generated as f64 / generate_s
    );

    let (mut baseline, mut rebuild, mut verify, mut swaps) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs.max(1) {
        let t = Instant::now();
        let scanned = scan(&pool).await?;
        baseline.push(scanned as f64 / t.elapsed().as_secs_f64());

        let conn = PgConnection::connect(&url).await?;
        let t = Instant::now();
        let report = projections::rebuild::rebuild(&pool, conn, "accounts", |_| {}).await?;
        rebuild.push(report.events as f64 / t.elapsed().as_secs_f64());
        swaps.push(report.swap_ms as f64);

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
            "audit run {run}: scan {:.0}, rebuild {:.0} (swap {} ms), verify {:.0} events/s",
            baseline[run - 1],
            rebuild[run - 1],
            report.swap_ms,
            verify[run - 1]
        );
    }
    drop(pool);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(AuditFigures {
        events: generated,
        scan_events_per_s: median(&baseline),
        rebuild_events_per_s: median(&rebuild),
        verify_events_per_s: median(&verify),
        swap_ms: median(&swaps) as u64,
    })
}

/// The floor: every event row read and decoded as audits read them.
async fn scan(pool: &PgPool) -> Result<u64, event_store::StoreError> {
    let mut conn = pool.acquire().await?;
    let mut rows = event_store::audit::events_in_chain_order(&mut conn, None, None);
    let mut n = 0;
    while rows.try_next().await?.is_some() {
        n += 1;
    }
    Ok(n)
}
