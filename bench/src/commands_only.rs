//! `tally-bench commands`: only the closed-loop command scenarios, with the CPU seconds each
//! process of the stack spent per accepted command, for quick profiling rounds.

use std::collections::BTreeMap;

use crate::command_load::{self, Mix};
use crate::cpu::Usage;
use crate::queries::{self, Read};
use crate::stack::{self, StackArgs};

#[derive(Debug, Clone, clap::Args)]
pub struct CommandsArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    #[arg(long, default_value_t = 100)]
    pub accounts: usize,
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    #[arg(long = "transfer-percent", default_value_t = 10)]
    pub transfer_percent: u64,
    /// Run the single-hot-account scenario too.
    #[arg(long)]
    pub hot: bool,
    /// Then `GET /v1/accounts/{id}` over the mix's accounts, with the same CPU figures.
    #[arg(long)]
    pub reads: bool,
    /// Instead of the closed loop: this many commands per second offered (open loop), with the
    /// projection lag (reply to visible over HTTP).
    #[arg(long)]
    pub rate: Option<u64>,
}

#[allow(clippy::print_stdout)]
pub async fn run(args: CommandsArgs) -> anyhow::Result<()> {
    let nats = args.stack.nats().await?;
    let token = args.stack.token.clone();
    let mut scenarios = vec![(
        "mix",
        Mix {
            accounts: stack::open_accounts(
                &nats,
                &token,
                &stack::fresh_prefix("mix"),
                args.accounts,
            )
            .await?,
            transfer_percent: args.transfer_percent,
        },
    )];
    if args.hot {
        scenarios.push((
            "hot",
            Mix {
                accounts: stack::open_accounts(&nats, &token, &stack::fresh_prefix("hot"), 1)
                    .await?,
                transfer_percent: 0,
            },
        ));
    }
    let reads = args.reads.then(|| scenarios[0].1.accounts.clone());
    for (name, mix) in scenarios {
        let before = Usage::now(&args.stack.run_dir);
        let run = match args.rate {
            Some(rate) => {
                let http = args.stack.http()?;
                args.stack
                    .wait_until_applied(&http, std::time::Duration::from_secs(60))
                    .await;
                command_load::open_loop(&nats, &http, &args.stack, &mix, rate, args.seconds).await
            }
            None => {
                command_load::closed_loop(&nats, &token, &mix, args.clients, args.seconds).await
            }
        };
        let spent = Usage::now(&args.stack.run_dir).since(&before);
        println!(
            "{name}: {:.0} accepted/s, p50 {:.1} ms p99 {:.1} ms, errors {:?}",
            run.accepted_per_s, run.latency.p50_ms, run.latency.p99_ms, run.errors
        );
        if let Some(visible) = &run.visible {
            println!(
                "  projection lag: p50 {:.1} ms p90 {:.1} ms p99 {:.1} ms max {:.1} ms ({} samples, {} timeouts)",
                visible.p50_ms,
                visible.p90_ms,
                visible.p99_ms,
                visible.max_ms,
                run.visible_samples,
                run.visible_timeouts
            );
        }
        print_cpu(&spent, args.seconds, run.accepted, "accepted command");
    }
    if let Some(accounts) = reads {
        let http = args.stack.http()?;
        let before = Usage::now(&args.stack.run_dir);
        let run = queries::closed_loop(
            &http,
            &args.stack.http_url,
            &token,
            &accounts,
            Read::Account,
            args.clients,
            args.seconds,
        )
        .await;
        let spent = Usage::now(&args.stack.run_dir).since(&before);
        println!(
            "GET account: {:.0} req/s, p50 {:.1} ms p99 {:.1} ms",
            run.ok_per_s, run.latency.p50_ms, run.latency.p99_ms
        );
        print_cpu(&spent, args.seconds, run.ok, "request");
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn print_cpu(spent: &BTreeMap<String, f64>, seconds: u64, done: u64, per: &str) {
    let done = done.max(1) as f64;
    let total: f64 = spent.values().sum();
    for (process, cpu_s) in spent.iter().chain([(&"all".to_owned(), &total)]) {
        println!(
            "  {process:<16} {:>6.1}% of a core  {:>7.1} µs CPU per {per}",
            100.0 * cpu_s / seconds as f64,
            1e6 * cpu_s / done
        );
    }
}
