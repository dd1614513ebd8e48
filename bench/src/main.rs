//! `tally-bench` (run by `./dev bench`): Tally measured end to end against the stack `./dev up`
//! started (release builds), each figure next to a baseline of the machine's own limits taken in
//! the same run, because the machine is shared and noisy. See BENCHMARKS.md.

mod audit_bench;
mod baselines;
mod batch_load;
mod batches_only;
mod command_load;
mod commands_only;
mod cpu;
mod cpu_budget;
mod feeds;
mod fixed_rate;
mod generate;
mod memory;
mod projection_scaling;
mod queries;
mod report;
mod stack;
mod stats;
mod suite;
mod topology;

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
    /// Only the batch scenarios (`batch.submit` of 10 and 100 deposits, and 100 atomic), beside
    /// the same deposits one per message measured in the same run.
    Batches(Box<batches_only::BatchesArgs>),
    /// The change feed: N feeds on one query-service, its memory per feed, and the time from a
    /// deposit to its change on the feed.
    Feeds(Box<feeds::FeedsArgs>),
    /// Only the closed-loop command scenarios, with each process's CPU per accepted command.
    Commands(Box<commands_only::CommandsArgs>),
    /// The deposit/withdraw closed loop and the projection lag at a modest rate, on whichever
    /// stack runs, to one JSON file per round (`./dev bench cluster` runs it on both topologies).
    Topology(Box<topology::TopologyArgs>),
    /// Medians per topology from `topology` rounds, side by side.
    TopologyReport(topology::TopologyReportArgs),
    /// Projection scaling: a generated backlog applied by 1, 2 and 4 workers (events/s), and
    /// the lag when one of 2 is SIGKILLed (own PostgreSQL and NATS; no stack needed; needs the
    /// release `projections` binary).
    Projections(projection_scaling::ProjectionScalingArgs),
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
        Scenario::Batches(args) => batches_only::run(*args).await,
        Scenario::Feeds(args) => feeds::run(*args).await,
        Scenario::Topology(args) => topology::run(*args).await,
        Scenario::TopologyReport(args) => topology::report(args),
        Scenario::Projections(args) => {
            let figures = projection_scaling::run(args).await?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(())
        }
        Scenario::Audit { events, runs } => {
            let figures = audit_bench::run(events, runs).await?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(())
        }
    }
}
