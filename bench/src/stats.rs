//! Latency summaries and medians across runs.

use serde::Serialize;

/// One run's latencies, in microseconds, summarised.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(mut latencies_us: Vec<u64>) -> Latency {
        latencies_us.sort_unstable();
        let at = |q: f64| ms(percentile(&latencies_us, q));
        Latency {
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: ms(latencies_us.last().copied().unwrap_or(0)),
        }
    }

    /// The run-by-run medians of each percentile.
    pub fn median(runs: &[Latency]) -> Latency {
        let of = |f: fn(&Latency) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        Latency {
            p50_ms: of(|l| l.p50_ms),
            p90_ms: of(|l| l.p90_ms),
            p99_ms: of(|l| l.p99_ms),
            max_ms: of(|l| l.max_ms),
        }
    }
}

pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

pub fn elapsed_us(since: std::time::Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians() {
        let l = Latency::of((1..=100).map(|i| i * 1000).collect());
        assert_eq!(l.p50_ms, 51.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.max_ms, 100.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[]), 0.0);
    }
}
