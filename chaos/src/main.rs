//! `tally-chaos` (run by `./dev chaos`): clients send deposits, withdrawals and transfers to the
//! cluster topology while processes are killed (`kill -9`) and restarted through
//! `./dev cluster kill|start`; then, after a bounded settle wait, the invariants are checked
//! against the store, the events stream, the read models and `tally audit verify`, and a
//! report is printed (and saved). Exit status 1 when an invariant fails or a fault could not be
//! injected, 2 when the run itself could not be carried out. Bounded in time throughout.

mod checks;
mod client;
mod faults;
mod model;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::time::Instant;

use crate::client::Sender;
use crate::faults::{Control, FaultRecord};

#[derive(Debug, Parser)]
#[command(
    name = "tally-chaos",
    about = "Fault injection on the cluster topology, with the invariants checked afterwards"
)]
pub struct Args {
    /// One fault of each kind, overlapping, under a minute of load (what `./dev test` runs).
    #[arg(long)]
    short: bool,
    /// Seconds of load for a full run (faults one at a time, then overlapping; every kind alone
    /// needs about 240 s, the overlapping rounds come after). Ignored with --short.
    #[arg(long, env = "TALLY_CHAOS_SECONDS", default_value_t = 360)]
    seconds: u64,
    /// Send no faults: the same load and checks on a healthy stack (a baseline).
    #[arg(long)]
    no_faults: bool,
    /// Every NATS node of the cluster, comma-separated.
    #[arg(
        long = "nats-url",
        env = "TALLY_NATS_URL",
        value_delimiter = ',',
        default_value = "nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224"
    )]
    nats_urls: Vec<String>,
    /// The NATS user the clients send commands as.
    #[arg(
        long = "nats-user",
        env = "TALLY_NATS_USER",
        default_value = "tally-client"
    )]
    nats_user: String,
    #[arg(
        long = "nats-password",
        env = "TALLY_NATS_PASSWORD",
        hide_env_values = true
    )]
    nats_password: String,
    /// A NATS user that may read `TALLY_EVENTS` (create an ordered consumer on it), to compare
    /// the stream with the store. `./dev chaos` uses the projections' user, read-only here.
    #[arg(
        long = "stream-user",
        env = "TALLY_CHAOS_STREAM_USER",
        default_value = "projections"
    )]
    stream_user: String,
    #[arg(
        long = "stream-password",
        env = "TALLY_CHAOS_STREAM_PASSWORD",
        hide_env_values = true
    )]
    stream_password: String,
    /// An `admin` token (not rate limited), for commands and HTTP reads.
    #[arg(long, env = "TALLY_TOKEN", hide_env_values = true)]
    token: String,
    /// Every query-service instance, comma-separated.
    #[arg(
        long = "http-url",
        env = "TALLY_CHAOS_HTTP_URLS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8480,http://127.0.0.1:8490"
    )]
    http_urls: Vec<String>,
    /// PostgreSQL, every host (libpq multi-host form); the checks read the primary.
    #[arg(
        long = "database-url",
        env = "TALLY_DATABASE_URL",
        default_value = "postgres://tally:tally@127.0.0.1:15432,127.0.0.1:15433/tally?target_session_attrs=read-write",
        hide_default_value = true
    )]
    database_url: String,
    /// The `./dev` script whose `cluster ps|kill|start` inject the faults.
    #[arg(long, env = "TALLY_CHAOS_DEV", default_value = "./dev")]
    dev: PathBuf,
    /// The `tally` CLI (for `tally audit verify`).
    #[arg(
        long = "tally-bin",
        env = "TALLY_CHAOS_TALLY_BIN",
        default_value = "target/release/tally"
    )]
    tally_bin: PathBuf,
    /// Concurrent clients, each with one command in flight.
    #[arg(long, env = "TALLY_CHAOS_CLIENTS", default_value_t = 8)]
    clients: usize,
    /// Commands per second each client sends at most.
    #[arg(
        long = "rate-per-client",
        env = "TALLY_CHAOS_RATE_PER_CLIENT",
        default_value_t = 20
    )]
    rate_per_client: u32,
    /// Accounts the run opens and moves money between.
    #[arg(long, env = "TALLY_CHAOS_ACCOUNTS", default_value_t = 16)]
    accounts: usize,
    /// A command without a definite answer this long after its first send is given up on
    /// (and reported).
    #[arg(
        long = "answer-within-s",
        env = "TALLY_CHAOS_ANSWER_WITHIN_S",
        default_value_t = 60
    )]
    answer_within_s: u64,
    /// After the load, the longest wait for the relay, the transfers and the read models to
    /// settle before the checks run.
    #[arg(long = "settle-s", env = "TALLY_CHAOS_SETTLE_S", default_value_t = 120)]
    settle_s: u64,
    /// Where to save the report (Markdown and JSON); none when unset.
    #[arg(long = "report-dir", env = "TALLY_CHAOS_REPORT_DIR")]
    report_dir: Option<PathBuf>,
}

/// Most clients and accounts a run uses: the machine is small and the run must stay bounded.
const CLIENTS_MAX: usize = 64;
const ACCOUNTS_MAX: usize = 1_000;
/// Load seconds of the short run: the last short fault (the PostgreSQL primary, restarted once
/// the standby took over) has healed well before.
const SHORT_LOAD_S: u64 = 55;
/// Fault tasks still running this long after the load stopped are abandoned (and reported).
const FAULT_JOIN_MAX: Duration = Duration::from_secs(180);

#[tokio::main]
#[allow(clippy::print_stdout)]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(report) => {
            println!("{}", report.markdown());
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                println!("chaos: FAILED (see the table above)");
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("tally-chaos: {error:#}");
            ExitCode::from(2)
        }
    }
}

#[allow(clippy::print_stdout)]
async fn run(args: Args) -> anyhow::Result<report::Report> {
    let clients = args.clients.clamp(1, CLIENTS_MAX);
    let accounts_n = args.accounts.clamp(2, ACCOUNTS_MAX);
    let load_s = if args.short {
        SHORT_LOAD_S
    } else {
        args.seconds.max(10)
    };
    let answer_within = Duration::from_secs(args.answer_within_s.clamp(1, 600));
    let control = Control {
        dev: args.dev.clone(),
    };
    let plan = if args.no_faults {
        Vec::new()
    } else {
        faults::plan(args.short, load_s)
    };
    if !args.no_faults {
        let ps = control
            .ps()
            .await
            .context("./dev cluster ps (is the cluster topology up?)")?;
        println!("chaos: cluster before the run:");
        for line in &ps {
            println!(
                "  {} {} {}",
                line.name,
                line.pid.map_or("-".into(), |p| p.to_string()),
                line.role
            );
        }
    }

    let nats = client::connect(&args.nats_urls, &args.nats_user, &args.nats_password).await?;
    let stream_reader =
        client::connect(&args.nats_urls, &args.stream_user, &args.stream_password).await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut sender = Sender {
        nats,
        token: Arc::from(args.token.as_str()),
        answer_within,
        start: Instant::now(),
    };
    let (accounts, mut records) =
        client::open_accounts(&sender, &format!("chaos-{run_id}"), accounts_n).await?;
    println!(
        "chaos: run {run_id}: {clients} clients x {} commands/s, {accounts_n} accounts, {load_s} s of load, {} faults",
        args.rate_per_client,
        plan.len()
    );

    let t0 = Instant::now();
    sender.start = t0;
    let stop = t0 + Duration::from_secs(load_s);
    let accounts = Arc::new(accounts);
    let mut load = tokio::task::JoinSet::new();
    for c in 0..clients {
        load.spawn(client::run_client(
            sender.clone(),
            Arc::clone(&accounts),
            rand_seed(&run_id, c),
            args.rate_per_client,
            stop,
        ));
    }
    let probe = faults::Probe {
        nats: stream_reader.clone(),
        database_url: args.database_url.clone(),
    };
    let mut fault_tasks = tokio::task::JoinSet::new();
    for planned in plan.iter().copied() {
        let (control, probe) = (control.clone(), probe.clone());
        fault_tasks.spawn(async move {
            let record = faults::inject(&control, &probe, planned, t0).await;
            println!(
                "chaos: {} {}: killed at {:?} ms, restarted at {:?} ms{}",
                record.kind.label(),
                record.target,
                record.killed_ms,
                record.restarted_ms,
                record
                    .error
                    .as_deref()
                    .map(|e| format!(" ERROR {e}"))
                    .unwrap_or_default()
            );
            (planned, record)
        });
    }
    while let Some(done) = load.join_next().await {
        records.extend(done.context("a client task panicked")?);
    }
    let load_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    println!(
        "chaos: load stopped after {load_ms} ms, {} commands",
        records.len()
    );
    let mut fault_records: Vec<(faults::Planned, FaultRecord)> = Vec::new();
    let joined = tokio::time::timeout(FAULT_JOIN_MAX, async {
        while let Some(done) = fault_tasks.join_next().await {
            if let Ok(pair) = done {
                fault_records.push(pair);
            }
        }
    })
    .await;
    if joined.is_err() {
        fault_tasks.abort_all();
    }
    // Anything the plan named that did not report (aborted) is a fault not carried out.
    for planned in &plan {
        if !fault_records.iter().any(|(p, _)| p == planned) {
            fault_records.push((
                *planned,
                FaultRecord {
                    kind: planned.kind,
                    target: String::new(),
                    killed_ms: None,
                    took_over_ms: None,
                    restarted_ms: None,
                    back_ms: None,
                    error: Some(format!("still running after {FAULT_JOIN_MAX:?}; abandoned")),
                },
            ));
        }
    }
    fault_records.sort_by_key(|(p, _)| (p.at_s, p.kind as u8));

    let transfers = checks::accepted_transfers(&records);
    let target = checks::Target {
        database_url: &args.database_url,
        stream_reader: &stream_reader,
        accounts: &accounts,
        transfers: &transfers,
    };
    println!(
        "chaos: waiting (at most {} s) for the relay, the transfers and the read models",
        args.settle_s
    );
    let (backlog, settle_took, settled) =
        checks::settle(&target, Duration::from_secs(args.settle_s)).await;
    let inputs = checks::Inputs {
        target,
        records: &records,
        tally_bin: &args.tally_bin,
        http_urls: &args.http_urls,
        token: &args.token,
    };
    let checks = checks::run_all(&inputs).await?;
    let report = report::Report::new(report::Parts {
        run_id,
        short: args.short,
        clients,
        rate_per_client: args.rate_per_client,
        accounts: accounts_n,
        load_ms,
        answer_within_s: answer_within.as_secs(),
        settled,
        settle_ms: u64::try_from(settle_took.as_millis()).unwrap_or(u64::MAX),
        backlog,
        records: &records,
        faults: fault_records.into_iter().map(|(_, r)| r).collect(),
        checks,
    });
    if let Some(dir) = &args.report_dir {
        let paths = report.save(dir)?;
        println!("chaos: report saved to {}", paths.join(", "));
    }
    Ok(report)
}

/// A seed per client, different per run, so runs differ but a run's clients do too.
fn rand_seed(run_id: &str, client: usize) -> u64 {
    let base = u64::from_str_radix(run_id, 16).unwrap_or(0);
    base.wrapping_mul(31).wrapping_add(client as u64)
}
