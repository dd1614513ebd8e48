//! `tally-bench feeds`: the change feed at scale on one query-service instance: N feeds open at
//! once (one per account), the query-service's resident memory per feed, and the time from
//! sending a deposit to its change arriving on its account's feed, for a deposit to every
//! account at once. Medians of several runs.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::stack::{self, StackArgs};
use crate::stats::{Latency, median};

/// Feeds opened or deposits sent at once.
const CONCURRENCY: usize = 64;
const WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, clap::Args)]
pub struct FeedsArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Feeds open at once (one account each); the query-service's `--feeds-max` bounds it.
    #[arg(long, default_value_t = 1_000)]
    pub feeds: usize,
    /// Timed runs; medians are printed.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

struct Run {
    kib_per_feed: f64,
    open_s: f64,
    fan_out: Latency,
}

#[allow(clippy::print_stdout)]
pub async fn run(args: FeedsArgs) -> anyhow::Result<()> {
    let nats = args.stack.nats().await?;
    let token = args.stack.token.clone();
    let accounts =
        stack::open_accounts(&nats, &token, &stack::fresh_prefix("feeds"), args.feeds).await?;
    let http = args.stack.http()?;
    args.stack.wait_until_applied(&http, WAIT).await;
    let mut runs = Vec::new();
    for n in 1..=args.runs.max(1) {
        let run = once(&args, &nats, &token, &accounts).await?;
        println!(
            "run {n}: {} feeds open in {:.1} s, {:.1} KiB each; deposit to change p50 {:.1} ms p99 {:.1} ms",
            accounts.len(),
            run.open_s,
            run.kib_per_feed,
            run.fan_out.p50_ms,
            run.fan_out.p99_ms
        );
        runs.push(run);
    }
    let kib = median(&runs.iter().map(|r| r.kib_per_feed).collect::<Vec<_>>());
    let fan_out = Latency::median(&runs.iter().map(|r| r.fan_out).collect::<Vec<_>>());
    println!();
    println!("| feeds open | query-service RSS per feed | deposit → change p50 | p99 |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {} | {kib:.1} KiB | {:.1} ms | {:.1} ms |",
        accounts.len(),
        fan_out.p50_ms,
        fan_out.p99_ms
    );
    Ok(())
}

fn query_rss_mib(args: &FeedsArgs) -> anyhow::Result<f64> {
    crate::memory::services(&args.stack.run_dir)
        .get("query-service")
        .map(|rss| rss.rss_mib)
        .context("no query-service pid in the run dir (is `./dev up` running?)")
}

async fn once(
    args: &FeedsArgs,
    nats: &async_nats::Client,
    token: &str,
    accounts: &[String],
) -> anyhow::Result<Run> {
    let before_mib = query_rss_mib(args)?;
    let started = Instant::now();
    let (ready_tx, mut ready) = mpsc::channel::<()>(accounts.len());
    let (told_tx, mut told) = mpsc::channel::<(usize, Instant)>(accounts.len());
    let client = reqwest::Client::new();
    // At most CONCURRENCY feeds being opened at once.
    let opening = std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for (i, account) in accounts.iter().enumerate() {
        let url = format!("{}/v1/accounts/{account}/feed", args.stack.http_url);
        let place = std::sync::Arc::clone(&opening).acquire_owned().await?;
        let (client, token) = (client.clone(), token.to_owned());
        let (ready, told) = (ready_tx.clone(), told_tx.clone());
        tasks.push(tokio::spawn(async move {
            follow(client, url, token, i, (ready, place), told).await
        }));
    }
    drop((ready_tx, told_tx));
    for _ in 0..accounts.len() {
        tokio::time::timeout(WAIT, ready.recv())
            .await
            .context("feeds not open within 60 s")?
            .context("a feed failed to open")?;
    }
    let open_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_mib = query_rss_mib(args)?;
    let sent_at: Vec<Instant> = futures::stream::iter(accounts.iter())
        .map(|account| async move {
            let at = Instant::now();
            let body = serde_json::json!({"account_id": account, "amount": 1});
            stack::send(nats, token, "account.deposit", &body)
                .await
                .map(|_| at)
        })
        .buffered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let mut latencies = Vec::with_capacity(accounts.len());
    for _ in 0..accounts.len() {
        let (i, at) = tokio::time::timeout(WAIT, told.recv())
            .await
            .context("changes not all told within 60 s")?
            .context("a feed ended early")?;
        latencies.push(
            u64::try_from(at.saturating_duration_since(sent_at[i]).as_micros()).unwrap_or(u64::MAX),
        );
    }
    for task in tasks {
        task.abort();
    }
    Ok(Run {
        kib_per_feed: (after_mib - before_mib) * 1024.0 / accounts.len() as f64,
        open_s,
        fan_out: Latency::of(latencies),
    })
}

/// Opens one feed, reports it ready at its first change (the account's state), then reports
/// when the next change arrives.
async fn follow(
    client: reqwest::Client,
    url: String,
    token: String,
    index: usize,
    (ready, place): (mpsc::Sender<()>, tokio::sync::OwnedSemaphorePermit),
    told: mpsc::Sender<(usize, Instant)>,
) -> anyhow::Result<()> {
    let mut response = client
        .get(&url)
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("{url}: {}", response.status());
    }
    let mut buffer = String::new();
    let mut changes = 0;
    let mut place = Some(place);
    while let Some(chunk) = response.chunk().await? {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if !block.lines().any(|l| l == "event: change") {
                continue;
            }
            changes += 1;
            if changes == 1 {
                ready.send(()).await?;
                place.take();
                continue;
            }
            {
                told.send((index, Instant::now())).await?;
                return Ok(());
            }
        }
    }
    bail!("{url}: the feed ended")
}
