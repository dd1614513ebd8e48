//! `tally-bench` (run by `./dev bench`): Tally measured end to end against the stack `./dev up`
//! started (release builds), each figure next to a baseline of the machine's own limits taken in
//! the same run, because the machine is shared and noisy. See BENCHMARKS.md.

mod audit_bench;
mod baselines;
mod command_load;
mod commands_only;
mod cpu;
mod cpu_budget;
mod fixed_rate;
mod generate;
mod memory;
mod queries;
mod report;
mod stack;
mod stats;
mod suite;

use clap::{Parser, Subcommand};

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
    /// Every scenario against the running `./dev up` stack, then the report in bench/results/.
    All(Box<suite::SuiteArgs>),
    /// Only the closed-loop command scenarios, with each process's CPU per accepted command.
    Commands(Box<commands_only::CommandsArgs>),
    /// Only rebuild and audit-verify throughput, over a generated store (no stack needed).
    Audit {
        /// Events to generate (rounded down to whole accounts of 10 events).
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Timed runs of each measurement; medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

#[tokio::main]
#[allow(clippy::print_stdout)]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::All(args) => suite::run(*args).await,
        Scenario::Commands(args) => commands_only::run(*args).await,
        Scenario::Audit { events, runs } => {
            let figures = audit_bench::run(events, runs).await?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(())
        }
    }
}
