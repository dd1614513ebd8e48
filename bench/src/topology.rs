//! `tally-bench topology`: the figures that say what the cluster topology costs, measured on
//! whichever stack is running, and `tally-bench topology-report`: medians per topology, side by
//! side, from the rounds `./dev bench cluster` ran in alternation (single, cluster, single, ...),
//! so both topologies meet the same machine weather.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::command_load::{self, Mix};
use crate::stack::{self, StackArgs};
use crate::stats::median;

#[derive(Debug, Clone, clap::Args)]
pub struct TopologyArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// What this stack is (`single`, `cluster`): the report's column.
    #[arg(long)]
    pub label: String,
    /// Where this round's figures go (JSON).
    #[arg(long)]
    pub out: PathBuf,
    /// Length of each run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Accounts the deposits and withdrawals spread over.
    #[arg(long, default_value_t = 100)]
    pub accounts: usize,
    /// Concurrent clients of the closed loop.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Offered rate of the open loop whose projection lag is reported: well below either
    /// topology's maximum, so the lag is the pipeline's, not a queue's.
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
}

/// One round on one topology.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Round {
    pub label: String,
    pub accepted_per_s: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_samples: u64,
}

/// Waiting for an earlier round's backlog before the lag run, at most.
const DRAIN_WAIT: Duration = Duration::from_secs(60);

#[allow(clippy::print_stdout)]
pub async fn run(args: TopologyArgs) -> anyhow::Result<()> {
    let nats = args.stack.nats().await?;
    let http = args.stack.http()?;
    let token = args.stack.token.clone();
    let mix = Mix {
        accounts: stack::open_accounts(
            &nats,
            &token,
            &stack::fresh_prefix("topology"),
            args.accounts,
        )
        .await?,
        transfer_percent: 0,
    };
    let closed = command_load::closed_loop(&nats, &token, &mix, args.clients, args.seconds).await;
    args.stack.wait_until_applied(&http, DRAIN_WAIT).await;
    let open =
        command_load::open_loop(&nats, &http, &args.stack, &mix, args.rate, args.seconds).await;
    let lag = open.visible.unwrap_or_default();
    let round = Round {
        label: args.label,
        accepted_per_s: closed.accepted_per_s,
        p99_ms: closed.latency.p99_ms,
        errors: closed.errors.values().sum(),
        lag_p50_ms: lag.p50_ms,
        lag_p99_ms: lag.p99_ms,
        lag_samples: open.visible_samples,
    };
    println!(
        "{}: {:.0} accepted/s, p99 {:.1} ms, {} errors; lag at {}/s p50 {:.1} ms p99 {:.1} ms",
        round.label,
        round.accepted_per_s,
        round.p99_ms,
        round.errors,
        args.rate,
        round.lag_p50_ms,
        round.lag_p99_ms
    );
    std::fs::write(&args.out, serde_json::to_vec_pretty(&round)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct TopologyReportArgs {
    /// The rounds' JSON files, from `tally-bench topology`.
    pub rounds: Vec<PathBuf>,
    /// The report (Markdown) also goes here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[allow(clippy::print_stdout)]
pub fn report(args: TopologyReportArgs) -> anyhow::Result<()> {
    let mut by_label: BTreeMap<String, Vec<Round>> = BTreeMap::new();
    for path in &args.rounds {
        let round = read_round(path)?;
        by_label.entry(round.label.clone()).or_default().push(round);
    }
    let table = render(&by_label);
    print!("{table}");
    if let Some(out) = &args.out {
        std::fs::write(out, &table).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn read_round(path: &Path) -> anyhow::Result<Round> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// Medians per topology, then the cluster's figures as a share of the single node's.
fn render(by_label: &BTreeMap<String, Vec<Round>>) -> String {
    let of =
        |rounds: &[Round], f: fn(&Round) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let mut out = String::from(
        "| topology | rounds | accepted/s | p99 ms | errors | lag p50 ms | lag p99 ms |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut medians = BTreeMap::new();
    for (label, rounds) in by_label {
        let m = (
            of(rounds, |r| r.accepted_per_s),
            of(rounds, |r| r.p99_ms),
            rounds.iter().map(|r| r.errors).sum::<u64>(),
            of(rounds, |r| r.lag_p50_ms),
            of(rounds, |r| r.lag_p99_ms),
        );
        out.push_str(&format!(
            "| {label} | {} | {:.0} | {:.1} | {} | {:.1} | {:.1} |\n",
            rounds.len(),
            m.0,
            m.1,
            m.2,
            m.3,
            m.4
        ));
        medians.insert(label.as_str(), m);
    }
    if let (Some(single), Some(cluster)) = (medians.get("single"), medians.get("cluster")) {
        let ratio = |c: f64, s: f64| if s > 0.0 { c / s } else { f64::NAN };
        out.push_str(&format!(
            "\ncluster / single: accepted/s x{:.2}, p99 x{:.2}, lag p99 x{:.2}\n",
            ratio(cluster.0, single.0),
            ratio(cluster.1, single.1),
            ratio(cluster.4, single.4)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(label: &str, rate: f64) -> Round {
        Round {
            label: label.to_owned(),
            accepted_per_s: rate,
            p99_ms: rate / 100.0,
            errors: 1,
            lag_p50_ms: 1.0,
            lag_p99_ms: 2.0,
            lag_samples: 10,
        }
    }

    #[test]
    fn medians_per_topology_and_the_ratio() {
        let mut by_label = BTreeMap::new();
        by_label.insert(
            "single".to_owned(),
            vec![
                round("single", 1000.0),
                round("single", 3000.0),
                round("single", 2000.0),
            ],
        );
        by_label.insert("cluster".to_owned(), vec![round("cluster", 500.0)]);
        let table = render(&by_label);
        assert!(
            table.contains("| single | 3 | 2000 | 20.0 | 3 |"),
            "{table}"
        );
        assert!(table.contains("| cluster | 1 | 500 | 5.0 | 1 |"), "{table}");
        assert!(table.contains("accepted/s x0.25"), "{table}");
    }
}
