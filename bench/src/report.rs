//! The suite's report: one markdown table for people and one JSON document for tools, both
//! written under `bench/results/` (a dated pair and `latest.*`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::cpu_budget::{self, CpuRow};
use crate::memory::Rss;
use crate::stats::Latency;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub value: f64,
    pub unit: String,
    pub latency: Option<Latency>,
    pub errors: BTreeMap<String, u64>,
    /// The same-run baseline this row is compared with, and its value.
    pub baseline: Option<(String, f64)>,
    pub target: String,
}

impl Row {
    pub fn new(scenario: impl Into<String>, value: f64, unit: &str, target: &str) -> Row {
        Row {
            scenario: scenario.into(),
            value,
            unit: unit.to_owned(),
            latency: None,
            errors: BTreeMap::new(),
            baseline: None,
            target: target.to_owned(),
        }
    }

    pub fn latency(mut self, latency: Latency) -> Row {
        self.latency = Some(latency);
        self
    }

    pub fn errors(mut self, errors: BTreeMap<String, u64>) -> Row {
        self.errors = errors;
        self
    }

    pub fn against(mut self, baseline: &str, value: f64) -> Row {
        self.baseline = Some((baseline.to_owned(), value));
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub commit: String,
    pub taken_at: String,
    pub cores: usize,
    pub runs: usize,
    pub seconds_per_run: u64,
    pub rows: Vec<Row>,
    /// CPU per accepted command in each closed-loop command scenario.
    pub cpu: Vec<CpuRow>,
    /// Each service's memory before the load (idle) and its peak after it.
    pub memory_idle: BTreeMap<String, Rss>,
    pub memory_after: BTreeMap<String, Rss>,
    pub total_seconds: f64,
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Tally bench, commit `{}`, {} cores, {} (medians of {} runs of {} s; latencies in ms)\n\n",
            self.commit, self.cores, self.taken_at, self.runs, self.seconds_per_run
        );
        out.push_str("| scenario | result | p50 | p90 | p99 | max | errors | same-run baseline | × baseline | target |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---|---|---:|---|\n");
        for row in &self.rows {
            let l = |f: fn(&Latency) -> f64| {
                row.latency
                    .as_ref()
                    .map_or(String::from("—"), |l| format!("{:.1}", f(l)))
            };
            let errors = if row.errors.is_empty() {
                "0".to_owned()
            } else {
                row.errors
                    .iter()
                    .map(|(code, n)| format!("{code}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let (baseline, ratio) = match &row.baseline {
                Some((name, value)) if *value > 0.0 => (
                    format!("{name}: {}", thousands(*value)),
                    format!("{:.2}", row.value / value),
                ),
                _ => ("—".into(), "—".into()),
            };
            out.push_str(&format!(
                "| {} | {} {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                row.scenario,
                thousands(row.value),
                row.unit,
                l(|l| l.p50_ms),
                l(|l| l.p90_ms),
                l(|l| l.p99_ms),
                l(|l| l.max_ms),
                errors,
                baseline,
                ratio,
                row.target
            ));
        }
        out.push_str(&cpu_budget::markdown(&self.cpu, self.cores));
        out.push_str("\n| service | idle RSS MiB | RSS after load MiB | peak RSS MiB | target |\n|---|---:|---:|---:|---|\n");
        for (service, after) in &self.memory_after {
            let idle = self.memory_idle.get(service).map_or(0.0, |r| r.rss_mib);
            out.push_str(&format!(
                "| {service} | {idle:.1} | {:.1} | {:.1} | idle ≤ 64 |\n",
                after.rss_mib, after.peak_mib
            ));
        }
        out.push_str(&format!(
            "\nThe whole suite took {:.0} s.\n",
            self.total_seconds
        ));
        out
    }

    /// Writes `<dir>/<stamp>-<commit>.{md,json}` and `<dir>/latest.{md,json}`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<std::path::PathBuf> {
        std::fs::create_dir_all(dir)?;
        let stamp = self.taken_at.replace([':', '-'], "");
        let base = dir.join(format!("{stamp}-{}", self.commit));
        let markdown = self.markdown();
        let json = serde_json::to_string_pretty(self)?;
        for (path, text) in [
            (base.with_extension("md"), &markdown),
            (base.with_extension("json"), &json),
            (dir.join("latest.md"), &markdown),
            (dir.join("latest.json"), &json),
        ] {
            std::fs::write(&path, text)?;
        }
        Ok(base.with_extension("md"))
    }
}

fn thousands(value: f64) -> String {
    let rounded = value.round() as i64;
    let digits = rounded.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if rounded < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1,000");
    }

    #[test]
    fn a_row_shows_its_ratio() {
        let report = Report {
            commit: "abc".into(),
            taken_at: "2026-01-01T00:00:00Z".into(),
            cores: 2,
            runs: 3,
            seconds_per_run: 10,
            rows: vec![
                Row::new("commands", 500.0, "accepted/s", "≥ 5,000").against("inserts", 1000.0),
            ],
            cpu: vec![],
            memory_idle: BTreeMap::new(),
            memory_after: BTreeMap::new(),
            total_seconds: 1.0,
        };
        let md = report.markdown();
        assert!(md.contains("| commands | 500 accepted/s |"), "{md}");
        assert!(md.contains("| inserts: 1,000 | 0.50 |"), "{md}");
    }
}
