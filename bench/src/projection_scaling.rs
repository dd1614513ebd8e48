//! Projection scaling (`./dev bench projections`): how fast 1, 2 and 4 projections workers
//! apply a backlog of the partitioned events stream, and the lag over time when one of two is
//! SIGKILLed mid-run. On a PostgreSQL (durable settings) and a nats-server started here on
//! loopback, not the running stack: each run starts from an empty read model.
//!
//! The backlog: generated accounts of ten events each (`generate`), written by the event
//! store's own write path and published to `TALLY_EVENTS` (with its partition transform) as
//! the relay would, with no worker running. Per run: the read model and the consumers are
//! reset, W worker binaries (`projections`, next to this one) start together, and the rate is
//! the backlog over the time from the first applied event to the last.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::TryStreamExt;
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};

use crate::generate;
use crate::stats::median;

/// Longest any one run may take before the scenario gives up.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
/// Publishes in flight while loading the stream.
const PUBLISH_IN_FLIGHT: usize = 2_000;
/// How often progress (applied events) is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Lag samples printed for the kill run (one per this).
const LAG_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, clap::Args)]
pub struct ProjectionScalingArgs {
    /// Events in the backlog (rounded down to whole accounts of 10 events).
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Runs per worker count (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Partitions of the events stream.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Worker counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub workers: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScalingFigures {
    pub events: u64,
    pub partitions: u32,
    /// (workers, median applied events/s, each run's)
    pub rates: Vec<(usize, f64, Vec<f64>)>,
    /// Kill run: seconds from start to the kill, from the kill to the last event applied, and
    /// (seconds since start, events behind) samples.
    pub kill_at_s: f64,
    pub kill_to_done_s: f64,
    pub lag: Vec<(f64, u64)>,
}

/// A worker process, SIGKILLed when dropped.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Setup {
    pool: PgPool,
    url: String,
    nats_url: String,
    prefix: String,
    events: u64,
    partitions: u32,
    binary: PathBuf,
}

#[allow(clippy::print_stdout)]
pub async fn run(args: ProjectionScalingArgs) -> anyhow::Result<ScalingFigures> {
    let binary = std::env::current_exe()?
        .parent()
        .map(|d| d.join("projections"))
        .context("where tally-bench is")?;
    if !binary.exists() {
        bail!(
            "{} is missing: cargo build --release -p projections",
            binary.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("tally-bench-proj-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pg = tests::postgres_server::PostgresServer::start_durable(&dir.join("pg"))
        .map_err(anyhow::Error::msg)
        .context("starting PostgreSQL")?;
    let nats = tests::nats_server::NatsServer::start(&dir.join("nats"))
        .map_err(anyhow::Error::msg)
        .context("starting nats-server")?;
    let mut admin = PgConnection::connect(&pg.url("postgres")).await?;
    sqlx::query("CREATE DATABASE bench")
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    let url = pg.url("bench");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    platform::db::migrate(&pool).await?;
    let started = Instant::now();
    let generated = generate::events(&pool, args.events / 10).await?;
    event_store::maintenance::vacuum_analyze(&pool).await?;
    let setup = Setup {
        pool,
        url,
        nats_url: nats.url(),
        prefix: "bench".to_owned(),
        events: generated,
        partitions: args.partitions.max(1),
        binary,
    };
    publish(&setup).await?;
    println!(
        "projections: {generated} events generated and published in {:.1}s, {} partitions",
        started.elapsed().as_secs_f64(),
        setup.partitions
    );

    let mut rates = Vec::new();
    for &workers in &args.workers {
        let mut runs = Vec::new();
        for run in 1..=args.runs.max(1) {
            reset(&setup).await?;
            let spawned: Vec<Worker> = (0..workers.max(1))
                .map(|_| spawn(&setup))
                .collect::<anyhow::Result<_>>()?;
            let (first, last, _) = follow(&setup, None).await?;
            drop(spawned);
            let rate = setup.events as f64 / (last - first).max(1e-3);
            println!("projections: {workers} worker(s), run {run}: {rate:.0} events/s");
            runs.push(rate);
        }
        rates.push((workers, median(&runs), runs));
    }

    // Two workers, one SIGKILLed a third of the way through.
    reset(&setup).await?;
    let mut spawned: Vec<Worker> = vec![spawn(&setup)?, spawn(&setup)?];
    let (_, last, (kill_at, lag)) = follow(&setup, Some(&mut spawned)).await?;
    drop(spawned);
    let kill_at = kill_at.unwrap_or(0.0);
    println!(
        "projections: one of 2 workers killed at {kill_at:.1}s; backlog applied {:.1}s later",
        last - kill_at
    );
    for (t, behind) in lag
        .iter()
        .step_by(usize::try_from(LAG_EVERY.as_millis() / SAMPLE_EVERY.as_millis()).unwrap_or(5))
    {
        println!("  t={t:>5.1}s behind={behind}");
    }
    drop(setup);
    drop(nats);
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ScalingFigures {
        events: generated,
        partitions: args.partitions,
        rates,
        kill_at_s: kill_at,
        kill_to_done_s: last - kill_at,
        lag,
    })
}

/// The generated history onto the partitioned events stream, as the relay publishes it.
async fn publish(setup: &Setup) -> anyhow::Result<()> {
    let client = async_nats::connect(setup.nats_url.as_str()).await?;
    let js = async_nats::jetstream::new(client);
    let subjects = platform::nats::Subjects::new(&setup.prefix)?;
    platform::nats::ensure_streams_partitioned(
        &js,
        &subjects,
        1,
        platform::nats::DUPLICATE_WINDOW,
        setup.partitions,
    )
    .await?;
    let mut conn = setup.pool.acquire().await?;
    let horizon = event_store::history::horizon(&mut conn).await?;
    drop(conn);
    let mut rows = event_store::history::range(
        &setup.pool,
        "account",
        event_store::history::Horizon::START,
        horizon,
    );
    let mut acks = Vec::with_capacity(PUBLISH_IN_FLIGHT);
    while let Some(row) = rows.try_next().await? {
        let event = row.into_message()?;
        let subject = subjects.event(&event.aggregate_type, &event.aggregate_id);
        acks.push(
            js.publish(subject, serde_json::to_vec(&event)?.into())
                .await?,
        );
        if acks.len() == PUBLISH_IN_FLIGHT {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// An empty read model, and no consumers: the next workers start from the stream's beginning.
async fn reset(setup: &Setup) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "TRUNCATE accounts, account_entries, currency_totals, transfers, projection_versions,
                  projection_partition_checkpoints, projection_parked, projection_parked_events",
    )
    .execute(&setup.pool)
    .await?;
    let client = async_nats::connect(setup.nats_url.as_str()).await?;
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(format!("{}_EVENTS", setup.prefix.to_uppercase()))
        .await?;
    for projection in projections::Projection::ALL {
        for k in 0..setup.partitions {
            let _ = stream
                .delete_consumer(&projections::lag::consumer_name(projection, k))
                .await;
        }
    }
    Ok(())
}

fn spawn(setup: &Setup) -> anyhow::Result<Worker> {
    let child = Command::new(&setup.binary)
        .arg(format!("--database-url={}", setup.url))
        .arg(format!("--nats-url={}", setup.nats_url))
        .arg(format!("--subject-prefix={}", setup.prefix))
        .arg(format!("--event-partitions={}", setup.partitions))
        .arg("--ops-addr=127.0.0.1:0")
        .env("TALLY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", setup.binary.display()))?;
    Ok(Worker(child))
}

/// Samples the applied count until the whole backlog is applied: (seconds to the first applied
/// event, seconds to the last, (when one worker was killed, lag samples)). With `kill`, the
/// first worker is SIGKILLed once a third of the backlog is applied.
async fn follow(
    setup: &Setup,
    mut kill: Option<&mut Vec<Worker>>,
) -> anyhow::Result<(f64, f64, (Option<f64>, Vec<(f64, u64)>))> {
    let started = Instant::now();
    let mut first = None;
    let mut killed_at = None;
    let mut lag = Vec::new();
    loop {
        let applied: i64 = sqlx::query_scalar(
            "SELECT COALESCE(sum(events_applied), 0)::bigint FROM projection_partition_checkpoints
             WHERE projection = 'accounts'",
        )
        .fetch_one(&setup.pool)
        .await?;
        let applied = u64::try_from(applied).unwrap_or(0);
        let now = started.elapsed().as_secs_f64();
        lag.push((now, setup.events.saturating_sub(applied)));
        if applied > 0 && first.is_none() {
            first = Some(now);
        }
        if applied >= setup.events {
            return Ok((first.unwrap_or(0.0), now, (killed_at, lag)));
        }
        if killed_at.is_none()
            && applied >= setup.events / 3
            && let Some(workers) = kill.as_deref_mut()
            && let Some(victim) = workers.first_mut()
        {
            victim.0.kill()?;
            let _ = victim.0.wait();
            killed_at = Some(now);
        }
        if started.elapsed() > RUN_TIMEOUT {
            bail!(
                "{applied} of {} events applied after {RUN_TIMEOUT:?}",
                setup.events
            );
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}
