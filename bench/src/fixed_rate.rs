//! The fixed-rate scenario and its projection lag: at the rate the target names, and, when
//! that rate is beyond what this machine can take, again at a share of the maximum the same
//! run measured, so a slow machine's report still says how the lag holds near its limit.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::command_load::{self, LoadRun, Mix};
use crate::report::Row;
use crate::stack::StackArgs;
use crate::stats::{Latency, median};

/// Longest wait before a fixed-rate run for the stack to apply what the runs before it sent.
const SETTLE_MAX: Duration = Duration::from_secs(60);
/// The share of the measured deposit/withdraw maximum offered when the named rate is beyond
/// it: 5,000/s was 93% of that maximum on the machine the targets were set against.
pub const CAPACITY_SHARE: f64 = 0.9;
/// Below this share of the offered rate accepted, the stack did not keep up with it.
const KEPT_UP: f64 = 0.99;

/// `runs` fixed-rate runs of `mix` at `rate`, each after the stack has caught up.
#[allow(clippy::print_stdout)]
pub async fn runs(
    nats: &async_nats::Client,
    http: &reqwest::Client,
    stack: &StackArgs,
    mix: &Mix,
    rate: u64,
    seconds: u64,
    runs: usize,
) -> Vec<LoadRun> {
    let mut fixed = vec![];
    for run in 1..=runs {
        if !stack.wait_until_applied(http, SETTLE_MAX).await {
            println!("run {run}: the stack was still applying earlier events after {SETTLE_MAX:?}");
        }
        let f = command_load::open_loop(nats, http, stack, mix, rate, seconds).await;
        println!(
            "run {run}: fixed {rate}/s: {:.0} accepted/s p99 {:.1} ms, visible p99 {:.1} ms ({} samples, {} timeouts) {:?}",
            f.accepted_per_s,
            f.latency.p99_ms,
            f.visible.map_or(0.0, |v| v.p99_ms),
            f.visible_samples,
            f.visible_timeouts,
            f.errors
        );
        fixed.push(f);
    }
    fixed
}

/// Whether the stack took `rate` as offered: the client kept up (no backlog) and nearly every
/// command was accepted at the rate.
pub fn kept_up(rate: u64, runs: &[LoadRun]) -> bool {
    let accepted = median(&runs.iter().map(|r| r.accepted_per_s).collect::<Vec<_>>());
    let backlog = runs
        .iter()
        .any(|r| r.errors.contains_key(command_load::CLIENT_BACKLOG));
    !backlog && accepted >= rate as f64 * KEPT_UP
}

/// [`CAPACITY_SHARE`] of `maximum` accepted/s, in hundreds.
pub fn share_of(maximum: f64) -> u64 {
    ((maximum * CAPACITY_SHARE / 100.0).floor() as u64).max(1) * 100
}

/// The offered-rate row: accepted/s and latencies from each command's schedule.
pub fn load_row(rate: u64, runs: &[LoadRun], note: &str) -> Row {
    crate::suite::load_row(
        format!("deposits/withdrawals at a fixed {rate}/s offered{note} (latency from schedule)"),
        runs,
        "—",
    )
}

/// The reply-to-visible row of the same runs.
pub fn visible_row(rate: u64, runs: &[LoadRun], note: &str) -> Row {
    let samples: Vec<Latency> = runs.iter().filter_map(|r| r.visible).collect();
    let timeouts: u64 = runs.iter().map(|r| r.visible_timeouts).sum();
    let mut errors = BTreeMap::new();
    if timeouts > 0 {
        errors.insert("not visible within 5 s".to_owned(), timeouts);
    }
    Row::new(
        format!("projection lag: reply → visible over HTTP, at {rate}/s{note}"),
        runs.iter().map(|r| r.visible_samples).sum::<u64>() as f64,
        "samples",
        "p99 ≤ 100 ms at 5,000/s",
    )
    .latency(Latency::median(&samples))
    .errors(errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(accepted_per_s: f64, backlog: bool) -> LoadRun {
        let mut errors = BTreeMap::new();
        if backlog {
            errors.insert(command_load::CLIENT_BACKLOG.to_owned(), 3);
        }
        LoadRun {
            accepted_per_s,
            errors,
            ..LoadRun::default()
        }
    }

    #[test]
    fn a_rate_is_kept_up_only_without_backlog_and_at_the_rate() {
        assert!(kept_up(5_000, &[run(5_000.0, false), run(4_990.0, false)]));
        assert!(!kept_up(5_000, &[run(5_000.0, true), run(5_000.0, false)]));
        assert!(!kept_up(5_000, &[run(4_187.0, false), run(4_100.0, false)]));
    }

    #[test]
    fn the_share_rate_is_ninety_percent_in_hundreds() {
        assert_eq!(share_of(3_353.0), 3_000);
        assert_eq!(share_of(5_369.0), 4_800);
        assert_eq!(share_of(10.0), 100);
    }
}
