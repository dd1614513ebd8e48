//! `tally-bench all` (what `./dev bench` runs): every scenario against the running stack, with
//! the machine's baselines measured in between, then the report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use crate::command_load::{self, LoadRun, Mix};
use crate::cpu_budget::{CpuRow, Spent, measured};
use crate::queries::{self, QueryRun, Read};
use crate::report::{Report, Row};
use crate::stack::{self, StackArgs};
use crate::stats::{Latency, median};
use crate::{audit_bench, baselines, batch_load, fixed_rate, memory};

#[derive(Debug, Clone, clap::Args)]
pub struct SuiteArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Timed runs of every scenario; the report gives medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Length of each command scenario's run (queries and baselines run half as long).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Accounts the command mix spreads over.
    #[arg(long, default_value_t = 100)]
    pub accounts: usize,
    /// Concurrent clients (commands and queries).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Share of transfer requests in the command mix, in percent.
    #[arg(long = "transfer-percent", default_value_t = 10)]
    pub transfer_percent: u64,
    /// Concurrent clients of the wide scenarios, the mix and deposits/withdrawals only (more
    /// in flight, as a service with many callers has).
    #[arg(long = "wide-clients", default_value_t = 64)]
    pub wide_clients: usize,
    /// Concurrent clients of the batch scenarios, each with one batch in flight.
    #[arg(long = "batch-clients", default_value_t = 8)]
    pub batch_clients: usize,
    /// Offered rate of the fixed-rate scenario (deposits and withdrawals), the rate the
    /// projection-lag target names.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Events in the generated store for rebuild and verify (0: skip them).
    #[arg(long = "audit-events", default_value_t = 1_000_000)]
    pub audit_events: u64,
    /// Where the report goes.
    #[arg(long = "results-dir", default_value = "bench/results")]
    pub results_dir: PathBuf,
}

const INSERTS: &str = "PG 1-row tx/s";
const BATCHED: &str = "PG rows/s in 10-row tx";
const PUBLISHES: &str = "JetStream publish msg/s";
const SCAN: &str = "plain scan events/s";
const ONE_PER_MESSAGE: &str = "deposits/withdrawals one per message/s";

#[allow(clippy::print_stdout)]
pub async fn run(args: SuiteArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let runs = args.runs.max(1);
    let memory_idle = memory::services(&args.stack.run_dir);
    let nats = args.stack.nats().await?;
    let http = args.stack.http()?;
    let token = args.stack.token.clone();
    let pool = args
        .stack
        .pool(u32::try_from(args.clients).unwrap_or(16))
        .await?;

    println!("setting up {} accounts and a hot one", args.accounts);
    let spread = Mix {
        accounts: stack::open_accounts(&nats, &token, &stack::fresh_prefix("mix"), args.accounts)
            .await?,
        transfer_percent: args.transfer_percent,
    };
    let hot = Mix {
        accounts: stack::open_accounts(&nats, &token, &stack::fresh_prefix("hot"), 1).await?,
        transfer_percent: 0,
    };
    // The same accounts, deposits and withdrawals only.
    let plain = Mix {
        accounts: spread.accounts.clone(),
        transfer_percent: 0,
    };
    baselines::create_table(&pool).await?;
    let half = (args.seconds / 2).max(1);
    let (mut mixed, mut hots, mut inserts, mut batched) = (vec![], vec![], vec![], vec![]);
    let (mut wides, mut wide_mixes) = (vec![], vec![]);
    let mut spent: [Vec<Spent>; 4] = Default::default();
    let mut batches = batch_load::Scenarios::default();
    for run in 1..=runs {
        let dir = &args.stack.run_dir;
        let accepted = |r: &LoadRun| r.accepted;
        let loop_of =
            |mix, clients| command_load::closed_loop(&nats, &token, mix, clients, args.seconds);
        let (m, m_cpu) = measured(dir, loop_of(&spread, args.clients), accepted).await;
        let (wm, wm_cpu) = measured(dir, loop_of(&spread, args.wide_clients), accepted).await;
        let (w, w_cpu) = measured(dir, loop_of(&plain, args.wide_clients), accepted).await;
        let (h, h_cpu) = measured(dir, loop_of(&hot, args.clients), accepted).await;
        for (all, one) in spent.iter_mut().zip([m_cpu, wm_cpu, w_cpu, h_cpu]) {
            all.push(one);
        }
        // Deposits many to a message, on the same accounts, beside the one-per-message loops.
        let b = batches
            .run_once(
                dir,
                &nats,
                &token,
                &plain.accounts,
                args.batch_clients,
                half,
            )
            .await;
        let b: Vec<String> = b
            .iter()
            .zip(batch_load::Scenarios::SHAPES)
            .map(|(run, shape)| batch_load::summary(run, shape))
            .collect();
        println!("run {run}: {}", b.join(" | "));
        let i = baselines::postgres_inserts(&pool, args.clients, half, 1).await?;
        let b =
            baselines::postgres_inserts(&pool, args.clients, half, baselines::BATCH_ROWS).await?;
        println!(
            "run {run}: mix {:.0}/s p99 {:.1} ms {:?} | wide mix {:.0}/s p99 {:.1} ms {:?} | deposits/withdrawals {:.0}/s p99 {:.1} ms {:?} | hot {:.0}/s p99 {:.1} ms {:?} | {INSERTS} {i:.0} | {BATCHED} {b:.0}",
            m.accepted_per_s,
            m.latency.p99_ms,
            m.errors,
            wm.accepted_per_s,
            wm.latency.p99_ms,
            wm.errors,
            w.accepted_per_s,
            w.latency.p99_ms,
            w.errors,
            h.accepted_per_s,
            h.latency.p99_ms,
            h.errors
        );
        mixed.push(m);
        wide_mixes.push(wm);
        wides.push(w);
        hots.push(h);
        inserts.push(i);
        batched.push(b);
    }
    baselines::drop_table(&pool).await?;
    let rate = args.rate.max(1);
    let fixed = fixed_rate::runs(&nats, &http, &args.stack, &plain, rate, args.seconds, runs).await;
    // Beyond this machine at the named rate: the lag again near its limit, as a share of the
    // deposit/withdraw maximum these runs measured.
    let share_rate = fixed_rate::share_of(median(&rates(&wides)));
    let at_share = if !fixed_rate::kept_up(rate, &fixed) && share_rate < rate {
        let f = fixed_rate::runs(
            &nats,
            &http,
            &args.stack,
            &plain,
            share_rate,
            args.seconds,
            runs,
        )
        .await;
        Some(f)
    } else {
        None
    };
    let (mut gets, mut lists) = (vec![], vec![]);
    for run in 1..=runs {
        let g = queries::closed_loop(
            &http,
            &args.stack.http_url,
            &token,
            &spread.accounts,
            Read::Account,
            args.clients,
            half,
        )
        .await;
        let l = queries::closed_loop(
            &http,
            &args.stack.http_url,
            &token,
            &spread.accounts,
            Read::ListPage,
            args.clients,
            half,
        )
        .await;
        println!(
            "run {run}: GET account {:.0}/s p99 {:.1} ms | list page {:.0}/s p99 {:.1} ms",
            g.ok_per_s, g.latency.p99_ms, l.ok_per_s, l.latency.p99_ms
        );
        gets.push(g);
        lists.push(l);
    }
    let memory_after = memory::services(&args.stack.run_dir);
    let message_bytes = event_message_bytes(&pool).await?;
    let publishes = jetstream_baseline(runs, half, message_bytes).await?;
    let audit = if args.audit_events > 0 {
        Some(audit_bench::run(args.audit_events, runs).await?)
    } else {
        None
    };

    let (insert_rate, batched_rate, publish_rate) =
        (median(&inserts), median(&batched), median(&publishes));
    let scenarios = [
        format!(
            "commands: {} accounts, {} clients, {}% transfers, max rate",
            spread.accounts.len(),
            args.clients,
            args.transfer_percent
        ),
        format!(
            "commands: the same mix, {} clients, max rate",
            args.wide_clients
        ),
        format!(
            "commands: deposits/withdrawals on the same accounts, {} clients, max rate",
            args.wide_clients
        ),
        format!("one hot account, {} clients, max rate", args.clients),
    ];
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut cpu: Vec<CpuRow> = scenarios
        .iter()
        .zip(&spent)
        .filter_map(|(scenario, runs)| CpuRow::of(scenario.clone(), runs, cores))
        .collect();
    cpu.extend(batches.cpu(args.batch_clients, cores));
    let [mix_name, wide_mix_name, wide_name, hot_name] = scenarios;
    let commands_target = "≥ 5,000/s at p99 ≤ 50 ms";
    let mut rows = vec![
        load_row(mix_name, &mixed, commands_target).against(INSERTS, insert_rate),
        load_row(wide_mix_name, &wide_mixes, commands_target).against(INSERTS, insert_rate),
        load_row(wide_name, &wides, commands_target).against(INSERTS, insert_rate),
        load_row(hot_name, &hots, "≥ 2,000/s, 0 errors").against(INSERTS, insert_rate),
    ];
    rows.extend(batches.rows(
        args.batch_clients,
        (ONE_PER_MESSAGE, median(&rates(&wides))),
    ));
    rows.extend([
        fixed_rate::load_row(rate, &fixed, ""),
        fixed_rate::visible_row(rate, &fixed, ""),
        query_row(
            format!("GET account, {} clients", args.clients),
            &gets,
            "≥ 20,000/s at p99 ≤ 10 ms",
        ),
        query_row(
            format!("GET account list page (50), {} clients", args.clients),
            &lists,
            "—",
        ),
    ]);
    if let Some(at_share) = &at_share {
        let note = format!(
            " ({:.0}% of the deposit/withdraw maximum above)",
            fixed_rate::CAPACITY_SHARE * 100.0
        );
        rows.push(fixed_rate::load_row(share_rate, at_share, &note));
        rows.push(fixed_rate::visible_row(share_rate, at_share, &note));
    }
    if let Some(audit) = &audit {
        rows.push(
            Row::new(
                format!("rebuild accounts, {} events", audit.events),
                audit.rebuild_events_per_s,
                "events/s",
                "≥ 50,000/s",
            )
            .against(SCAN, audit.scan_events_per_s),
        );
        rows.push(
            Row::new(
                format!("audit verify, {} events", audit.events),
                audit.verify_events_per_s,
                "events/s",
                "≥ 100,000/s",
            )
            .against(SCAN, audit.scan_events_per_s),
        );
        rows.push(Row::new(
            "baseline: plain scan + decode of every event",
            audit.scan_events_per_s,
            "events/s",
            "—",
        ));
    }
    rows.push(Row::new(
        format!("baseline: {INSERTS}, {} clients", args.clients),
        insert_rate,
        "tx/s",
        "—",
    ));
    rows.push(Row::new(
        format!("baseline: {BATCHED}, {} clients", args.clients),
        batched_rate,
        "rows/s",
        "—",
    ));
    rows.push(Row::new(
        format!("baseline: {PUBLISHES}, {message_bytes} B, dedup ids, 256 acks in flight"),
        publish_rate,
        "msg/s",
        "—",
    ));

    let report = Report {
        commit: git_commit(),
        taken_at: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        cores,
        runs,
        seconds_per_run: args.seconds,
        rows,
        cpu,
        memory_idle,
        memory_after,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    let written = report
        .write(&args.results_dir)
        .context("writing the report")?;
    println!();
    println!("{}", report.markdown());
    println!(
        "written: {} (and latest.md, latest.json)",
        written.display()
    );
    Ok(())
}

fn rates(runs: &[LoadRun]) -> Vec<f64> {
    runs.iter().map(|r| r.accepted_per_s).collect()
}

/// The run with the median rate carries the errors shown; latencies are medians per percentile.
pub(crate) fn load_row(scenario: String, runs: &[LoadRun], target: &str) -> Row {
    let latency = Latency::median(&runs.iter().map(|r| r.latency).collect::<Vec<_>>());
    Row::new(scenario, median(&rates(runs)), "accepted/s", target)
        .latency(latency)
        .errors(summed_errors(runs.iter().map(|r| &r.errors)))
}

fn query_row(scenario: String, runs: &[QueryRun], target: &str) -> Row {
    let latency = Latency::median(&runs.iter().map(|r| r.latency).collect::<Vec<_>>());
    Row::new(
        scenario,
        median(&runs.iter().map(|r| r.ok_per_s).collect::<Vec<_>>()),
        "req/s",
        target,
    )
    .latency(latency)
    .errors(summed_errors(runs.iter().map(|r| &r.errors)))
}

fn summed_errors<'a>(
    all: impl Iterator<Item = &'a BTreeMap<String, u64>>,
) -> BTreeMap<String, u64> {
    let mut total = BTreeMap::new();
    for errors in all {
        for (code, n) in errors {
            *total.entry(code.clone()).or_default() += n;
        }
    }
    total
}

/// The average size of a stored event (payload and metadata), the size of what the relay
/// publishes give or take its headers.
async fn event_message_bytes(pool: &sqlx::PgPool) -> anyhow::Result<usize> {
    // An empty store (a bench run before any command) is measured with messages of the size
    // a deposit's event has.
    let bytes = event_store::maintenance::average_event_bytes(pool).await?;
    Ok(bytes.unwrap_or(512.0) as usize)
}

/// JetStream's publish rate on a nats-server of its own (the stack's is busy and its users may
/// not create streams), same binary and stream settings.
#[allow(clippy::print_stdout)]
async fn jetstream_baseline(
    runs: usize,
    seconds: u64,
    message_bytes: usize,
) -> anyhow::Result<Vec<f64>> {
    let dir = std::env::temp_dir().join(format!("tally-bench-nats-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let server = tests::nats_server::NatsServer::start(&dir)
        .map_err(anyhow::Error::msg)
        .context("starting nats-server for the JetStream baseline")?;
    let mut rates = vec![];
    for run in 1..=runs {
        let rate = baselines::jetstream_publishes(&server.url(), message_bytes, seconds).await?;
        println!("run {run}: {PUBLISHES} {rate:.0}");
        rates.push(rate);
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rates)
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned())
}
