//! `tally-bench commands`: end-to-end command throughput and latency against a running stack
//! (`./dev up`, release build), over NATS request/reply exactly as clients send commands,
//! next to a baseline measured in the same run: single-row insert transactions of event-shaped
//! rows into the same PostgreSQL with the same concurrency.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use domain::CommandReply;
use serde_json::json;
use tokio::sync::Mutex;
use uuid::Uuid;

#[derive(Debug, Clone, clap::Args)]
pub struct CommandsArgs {
    /// NATS of the running stack.
    #[arg(
        long = "nats-url",
        env = "TALLY_NATS_URL",
        default_value = "nats://127.0.0.1:14222"
    )]
    nats_url: String,
    #[arg(long = "nats-user", env = "TALLY_NATS_USER")]
    nats_user: Option<String>,
    #[arg(
        long = "nats-password",
        env = "TALLY_NATS_PASSWORD",
        hide_env_values = true
    )]
    nats_password: Option<String>,
    /// A token allowed to write accounts (`eval "$(./dev env)"` sets an admin one).
    #[arg(long, env = "TALLY_TOKEN", hide_env_values = true)]
    token: String,
    /// PostgreSQL of the running stack, for the baseline.
    #[arg(
        long = "database-url",
        env = "TALLY_DATABASE_URL",
        default_value = "postgres://tally:tally@127.0.0.1:15432/tally"
    )]
    database_url: String,
    /// Accounts the commands spread over (1: the single-hot-account case).
    #[arg(long, default_value_t = 100)]
    accounts: usize,
    /// Concurrent clients, each sending one command at a time.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Length of each timed run.
    #[arg(long = "seconds", default_value_t = 10)]
    seconds: u64,
    /// Timed runs; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

#[derive(Debug, Default)]
struct Run {
    accepted: u64,
    latencies_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
}

#[allow(clippy::print_stdout)]
pub async fn run(args: CommandsArgs) -> anyhow::Result<()> {
    let options = match (&args.nats_user, &args.nats_password) {
        (Some(user), Some(password)) => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        _ => async_nats::ConnectOptions::new(),
    };
    let nats = options
        .connect(args.nats_url.as_str())
        .await
        .context("connecting to NATS (is `./dev up` running? did you `eval \"$(./dev env)\"`?)")?;
    let prefix = format!("bench{}", &Uuid::new_v4().simple().to_string()[..8]);
    let accounts: Vec<String> = (0..args.accounts.max(1))
        .map(|i| format!("{prefix}-{i}"))
        .collect();
    for account in &accounts {
        send(
            &nats,
            &args.token,
            "account.open",
            json!({"account_id": account, "owner": "bench", "currency": "EUR"}),
        )
        .await?;
        send(
            &nats,
            &args.token,
            "account.deposit",
            json!({"account_id": account, "amount": 1_000_000_000}),
        )
        .await?;
    }
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(u32::try_from(args.clients).unwrap_or(16))
        .connect(&args.database_url)
        .await
        .context("connecting to PostgreSQL for the baseline")?;
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_baseline (LIKE events INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING INDEXES)")
        .execute(&pool)
        .await?;

    let (mut rates, mut p50s, mut p99s, mut baselines) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=args.runs.max(1) {
        let result = timed(&nats, &args, &accounts).await;
        let mut latencies = result.latencies_us.clone();
        latencies.sort_unstable();
        let rate = result.accepted as f64 / args.seconds as f64;
        let (p50, p90, p99, max) = (
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.90),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(0),
        );
        let baseline = baseline(&pool, args.clients, args.seconds).await?;
        println!(
            "run {run}: {rate:.0} accepted/s  p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  errors {:?} | baseline {baseline:.0} inserts/s",
            ms(p50),
            ms(p90),
            ms(p99),
            ms(max),
            result.errors
        );
        rates.push(rate);
        p50s.push(ms(p50));
        p99s.push(ms(p99));
        baselines.push(baseline);
    }
    sqlx::query("DROP TABLE IF EXISTS bench_baseline")
        .execute(&pool)
        .await?;
    let (rate, baseline) = (median(&rates), median(&baselines));
    println!();
    println!(
        "commands bench: {} accounts, {} clients, {} s runs, median of {}:",
        accounts.len(),
        args.clients,
        args.seconds,
        args.runs.max(1)
    );
    println!(
        "  accepted/s     {rate:>10.0}  ({:.2} x the baseline)",
        rate / baseline
    );
    println!(
        "  p50 / p99 ms   {:>10.1} / {:.1}",
        median(&p50s),
        median(&p99s)
    );
    println!("  baseline       {baseline:>10.0}  single-row insert transactions/s, same clients");
    Ok(())
}

async fn timed(nats: &async_nats::Client, args: &CommandsArgs, accounts: &[String]) -> Run {
    let result = Arc::new(Mutex::new(Run::default()));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut clients = Vec::new();
    for c in 0..args.clients.max(1) {
        let (nats, token, accounts, result) = (
            nats.clone(),
            args.token.clone(),
            accounts.to_vec(),
            Arc::clone(&result),
        );
        clients.push(tokio::spawn(async move {
            let mut local = Run::default();
            let mut i = c;
            while Instant::now() < deadline {
                i += 1;
                let account = &accounts[i % accounts.len()];
                let command = if i % 2 == 0 {
                    "account.deposit"
                } else {
                    "account.withdraw"
                };
                let started = Instant::now();
                let outcome = send(
                    &nats,
                    &token,
                    command,
                    json!({"account_id": account, "amount": 1}),
                )
                .await;
                local
                    .latencies_us
                    .push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
                match outcome {
                    Ok(CommandReply::Accepted { .. }) => local.accepted += 1,
                    Ok(CommandReply::Rejected { error, .. }) => {
                        *local
                            .errors
                            .entry(error.code.as_str().to_owned())
                            .or_default() += 1;
                    }
                    Err(error) => {
                        *local
                            .errors
                            .entry(format!("transport: {error}"))
                            .or_default() += 1
                    }
                }
            }
            let mut total = result.lock().await;
            total.accepted += local.accepted;
            total.latencies_us.extend(local.latencies_us);
            for (code, n) in local.errors {
                *total.errors.entry(code).or_default() += n;
            }
        }));
    }
    for client in clients {
        let _ = client.await;
    }
    Arc::try_unwrap(result)
        .map(Mutex::into_inner)
        .unwrap_or_default()
}

async fn send(
    nats: &async_nats::Client,
    token: &str,
    command: &str,
    body: serde_json::Value,
) -> anyhow::Result<CommandReply> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Tally-Command-Id", Uuid::now_v7().to_string().as_str());
    headers.insert("Authorization", format!("Bearer {token}").as_str());
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        nats.request_with_headers(
            format!("tally.cmd.{command}"),
            headers,
            serde_json::to_vec(&body)?.into(),
        ),
    )
    .await
    .context("no reply within 10 s")??;
    Ok(serde_json::from_slice(&reply.payload)?)
}

/// Single-row insert transactions of event-shaped rows, `clients` at a time, for `seconds`.
async fn baseline(pool: &sqlx::PgPool, clients: usize, seconds: u64) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients.max(1) {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let id = Uuid::new_v4().to_string();
            while Instant::now() < deadline {
                n += 1;
                let inserted = sqlx::query(
                    "INSERT INTO bench_baseline (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                     VALUES ('account', $1, $2, 'MoneyDeposited', '2.0', $3, $4)",
                )
                .bind(format!("{id}-{c}"))
                .bind(i64::try_from(n).unwrap_or(i64::MAX))
                .bind(json!({"MoneyDeposited": {"amount": 1, "reference": "", "balance_after": n, "channel": "unspecified"}}))
                .bind(json!({"command_id": id, "actor": "bench"}))
                .execute(&pool)
                .await;
                inserted?;
            }
            Ok::<u64, sqlx::Error>(n)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task
            .await
            .context("baseline client panicked")?
            .context("baseline insert")?;
    }
    Ok(total as f64 / seconds as f64)
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}
