//! Where the machine's cores went per accepted command in each command scenario, and the rate
//! the cores would allow at that cost. This is the report's answer to "what limits the
//! figure": a closed loop that has the cores nearly all busy is bound by CPU per command, not by
//! a wait. Whether a rate target fits the machine at all follows from it: 5,000 commands/s on
//! 2 cores leaves 400 µs of CPU per command for the whole stack, the load generator included.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::cpu::Usage;
use crate::stats::median;

/// One scenario's CPU figures, medians over its runs.
#[derive(Debug, Clone, Serialize)]
pub struct CpuRow {
    pub scenario: String,
    /// Microseconds of CPU per accepted command, by process group (`postgres`,
    /// `nats-server`, each service, `tally-bench`).
    pub per_process_us: BTreeMap<String, f64>,
    /// Microseconds of CPU per accepted command over all of them (the median of each run's
    /// total, so not always the sum of the medians above).
    pub total_us: f64,
    /// Cores busy on average during the runs.
    pub busy_cores: f64,
    /// Commands per second the machine's cores would allow at `total_us` if every one of them
    /// were busy the whole time: the CPU ceiling of this scenario.
    pub ceiling_per_s: f64,
}

/// What one run of a scenario spent.
#[derive(Debug, Clone)]
pub struct Spent {
    pub accepted: u64,
    pub wall_s: f64,
    pub cpu_s: BTreeMap<String, f64>,
}

/// Runs `load` and measures the CPU each process of the stack spent meanwhile; `accepted`
/// reads the number of accepted commands off the result.
pub async fn measured<T>(
    run_dir: &Path,
    load: impl Future<Output = T>,
    accepted: impl FnOnce(&T) -> u64,
) -> (T, Spent) {
    let before = Usage::now(run_dir);
    let started = Instant::now();
    let result = load.await;
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_s = Usage::now(run_dir).since(&before);
    let accepted = accepted(&result);
    (
        result,
        Spent {
            accepted,
            wall_s,
            cpu_s,
        },
    )
}

impl CpuRow {
    /// `None` when no run accepted anything or nothing could be read (no stack processes
    /// found, say), so the report never shows a ceiling computed from nothing.
    pub fn of(scenario: impl Into<String>, runs: &[Spent], cores: usize) -> Option<CpuRow> {
        let runs: Vec<&Spent> = runs
            .iter()
            .filter(|r| r.accepted > 0 && r.wall_s > 0.0 && !r.cpu_s.is_empty())
            .collect();
        if runs.is_empty() {
            return None;
        }
        let per_command = |r: &Spent, cpu_s: f64| 1e6 * cpu_s / r.accepted as f64;
        let per_process_us = process_names(runs.iter().map(|r| &r.cpu_s))
            .into_iter()
            .map(|name| {
                let each: Vec<f64> = runs
                    .iter()
                    .map(|r| per_command(r, r.cpu_s.get(name).copied().unwrap_or(0.0)))
                    .collect();
                (name.clone(), median(&each))
            })
            .collect();
        let totals: Vec<f64> = runs
            .iter()
            .map(|r| per_command(r, r.cpu_s.values().sum()))
            .collect();
        let busy: Vec<f64> = runs
            .iter()
            .map(|r| r.cpu_s.values().sum::<f64>() / r.wall_s)
            .collect();
        let total_us = median(&totals);
        Some(CpuRow {
            scenario: scenario.into(),
            per_process_us,
            total_us,
            busy_cores: median(&busy),
            ceiling_per_s: if total_us > 0.0 {
                cores as f64 * 1e6 / total_us
            } else {
                0.0
            },
        })
    }
}

/// Every process named in any of `maps`, once each, in name order: a process that did not
/// run in one run (or scenario) still gets its column.
fn process_names<'a>(maps: impl Iterator<Item = &'a BTreeMap<String, f64>>) -> Vec<&'a String> {
    maps.flat_map(BTreeMap::keys)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The markdown table of [`CpuRow`]s, one column per process group.
pub fn markdown(rows: &[CpuRow], cores: usize) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let processes = process_names(rows.iter().map(|r| &r.per_process_us));
    let mut out = format!(
        "\nCPU per accepted command, µs (medians of the runs above; `tally-bench` is this load generator)\n\n| scenario | all | {} | cores busy of {cores} | rate {cores} cores allow at this cost |\n|---|---:|{}---:|---:|\n",
        processes
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
        "---:|".repeat(processes.len()),
    );
    for row in rows {
        let cells: Vec<String> = processes
            .iter()
            .map(|p| {
                row.per_process_us
                    .get(*p)
                    .map_or("—".to_owned(), |us| format!("{us:.0}"))
            })
            .collect();
        out.push_str(&format!(
            "| {} | {:.0} | {} | {:.2} | {:.0}/s |\n",
            row.scenario,
            row.total_us,
            cells.join(" | "),
            row.busy_cores,
            row.ceiling_per_s
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spent(accepted: u64, wall_s: f64, cpu: &[(&str, f64)]) -> Spent {
        Spent {
            accepted,
            wall_s,
            cpu_s: cpu.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect(),
        }
    }

    #[test]
    fn cost_per_command_and_the_ceiling_it_implies() {
        // 10,000 commands in 10 s using 1.0 s of postgres and 3.0 s of the rest: 400 µs each,
        // so 2 cores allow 5,000/s, and 0.4 cores were busy.
        let runs = [
            spent(10_000, 10.0, &[("postgres", 1.0), ("nats-server", 3.0)]),
            spent(10_000, 10.0, &[("postgres", 2.0), ("nats-server", 6.0)]),
            spent(10_000, 10.0, &[("postgres", 1.0), ("nats-server", 3.0)]),
        ];
        let Some(row) = CpuRow::of("mix", &runs, 2) else {
            panic!("runs with commands give a row");
        };
        assert_eq!(row.total_us, 400.0);
        assert_eq!(row.per_process_us["postgres"], 100.0);
        assert_eq!(row.per_process_us["nats-server"], 300.0);
        assert_eq!(row.ceiling_per_s, 5_000.0);
        assert!((row.busy_cores - 0.4).abs() < 1e-9, "{}", row.busy_cores);
        let md = markdown(&[row], 2);
        assert!(
            md.contains("| mix | 400 | 300 | 100 | 0.40 | 5000/s |"),
            "{md}"
        );
    }

    #[test]
    fn nothing_accepted_gives_no_row() {
        assert!(CpuRow::of("none", &[spent(0, 10.0, &[("postgres", 1.0)])], 2).is_none());
        assert!(CpuRow::of("unread", &[spent(10, 10.0, &[])], 2).is_none());
        assert_eq!(markdown(&[], 2), "");
    }
}
