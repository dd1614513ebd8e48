//! `tally-bench batches`: only the batch scenarios (deposits 10 and 100 to a message, and 100
//! all or nothing) and, in the same run, the same deposits one to a message, side by side.

use crate::batch_load::{self, Scenarios};
use crate::command_load::{self, Mix};
use crate::stack::{self, StackArgs};
use crate::stats::median;

#[derive(Debug, Clone, clap::Args)]
pub struct BatchesArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Timed runs of every scenario; medians are printed.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Length of each scenario's run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    #[arg(long, default_value_t = 100)]
    pub accounts: usize,
    /// Clients of the batch scenarios, each with one batch in flight.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Clients of the one-per-message loop, each with one command in flight.
    #[arg(long = "single-clients", default_value_t = 64)]
    pub single_clients: usize,
}

#[allow(clippy::print_stdout)]
pub async fn run(args: BatchesArgs) -> anyhow::Result<()> {
    let nats = args.stack.nats().await?;
    let token = args.stack.token.clone();
    let mix = Mix {
        accounts: stack::open_accounts(&nats, &token, &stack::fresh_prefix("batch"), args.accounts)
            .await?,
        transfer_percent: 0,
    };
    let mut scenarios = Scenarios::default();
    let mut singles = Vec::new();
    for run in 1..=args.runs.max(1) {
        let single =
            command_load::closed_loop(&nats, &token, &mix, args.single_clients, args.seconds).await;
        let batches = scenarios
            .run_once(
                &args.stack.run_dir,
                &nats,
                &token,
                &mix.accounts,
                args.clients,
                args.seconds,
            )
            .await;
        let batches: Vec<String> = batches
            .iter()
            .zip(Scenarios::SHAPES)
            .map(|(r, shape)| batch_load::summary(r, shape))
            .collect();
        println!(
            "run {run}: one per message {:.0}/s p99 {:.1} ms | {}",
            single.accepted_per_s,
            single.latency.p99_ms,
            batches.join(" | ")
        );
        singles.push(single.accepted_per_s);
    }
    let one = median(&singles);
    println!();
    println!(
        "| scenario | commands/s | batch p50 ms | batch p99 ms | × one per message | errors |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    println!(
        "| deposits/withdrawals one per message, {} clients | {one:.0} | | | 1.00 | |",
        args.single_clients
    );
    for row in scenarios.rows(args.clients, ("one per message", one)) {
        let latency = row.latency.unwrap_or_default();
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.2} | {:?} |",
            row.scenario,
            row.value,
            latency.p50_ms,
            latency.p99_ms,
            if one > 0.0 { row.value / one } else { 0.0 },
            row.errors
        );
    }
    Ok(())
}
