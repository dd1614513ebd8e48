//! The run's report: the invariants, then one row per fault with the outage clients saw and the
//! commands left without a definite answer; printed, and saved as Markdown and JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::checks::{Backlog, Check};
use crate::faults::FaultRecord;
use crate::model::{CommandRecord, Outcome, longest_wait_ms, outage_ms, unanswered_during};

pub struct Parts<'a> {
    pub run_id: String,
    pub short: bool,
    pub clients: usize,
    pub rate_per_client: u32,
    pub accounts: usize,
    pub load_ms: u64,
    pub answer_within_s: u64,
    pub settled: bool,
    pub settle_ms: u64,
    pub backlog: Option<Backlog>,
    pub records: &'a [CommandRecord],
    pub faults: Vec<FaultRecord>,
    pub checks: Vec<Check>,
}

#[derive(Debug, Serialize)]
pub struct FaultRow {
    #[serde(flatten)]
    pub fault: FaultRecord,
    /// Kill to the first accepted reply to an attempt sent after the kill.
    pub outage_ms: Option<u64>,
    /// The longest any command waiting during the fault waited for its answer.
    pub longest_wait_ms: u64,
    /// Commands waiting during the fault that got no definite answer in time.
    pub unanswered: Vec<uuid::Uuid>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub run_id: String,
    pub short: bool,
    pub clients: usize,
    pub rate_per_client: u32,
    pub accounts: usize,
    pub load_ms: u64,
    pub answer_within_s: u64,
    pub commands: u64,
    pub accepted: u64,
    pub rejected: BTreeMap<String, u64>,
    pub unanswered: u64,
    pub retried: u64,
    pub settled: bool,
    pub settle_ms: u64,
    pub backlog: Option<Backlog>,
    pub faults: Vec<FaultRow>,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(parts: Parts<'_>) -> Self {
        let records = parts.records;
        let mut rejected = BTreeMap::new();
        let (mut accepted, mut unanswered, mut retried) = (0, 0, 0);
        for r in records {
            match &r.outcome {
                Outcome::Accepted { .. } => accepted += 1,
                Outcome::Rejected { code } => *rejected.entry(code.clone()).or_default() += 1,
                Outcome::NoAnswer { .. } => unanswered += 1,
            }
            if r.attempts > 1 {
                retried += 1;
            }
        }
        let faults = parts
            .faults
            .into_iter()
            .map(|fault| {
                let (outage, longest, lost) = match fault.killed_ms {
                    Some(kill) => {
                        let healed = fault
                            .back_ms
                            .or(fault.restarted_ms)
                            .unwrap_or(parts.load_ms);
                        (
                            outage_ms(kill, records),
                            longest_wait_ms(kill, healed, records),
                            unanswered_during(kill, healed, records),
                        )
                    }
                    None => (None, 0, Vec::new()),
                };
                FaultRow {
                    fault,
                    outage_ms: outage,
                    longest_wait_ms: longest,
                    unanswered: lost,
                }
            })
            .collect();
        Report {
            run_id: parts.run_id,
            short: parts.short,
            clients: parts.clients,
            rate_per_client: parts.rate_per_client,
            accounts: parts.accounts,
            load_ms: parts.load_ms,
            answer_within_s: parts.answer_within_s,
            commands: records.len() as u64,
            accepted,
            rejected,
            unanswered,
            retried,
            settled: parts.settled,
            settle_ms: parts.settle_ms,
            backlog: parts.backlog,
            faults,
            checks: parts.checks,
        }
    }

    /// Every invariant held, every planned fault was carried out, and everything settled.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
            && self.faults.iter().all(|f| f.fault.error.is_none())
            && self.settled
    }

    pub fn markdown(&self) -> String {
        let secs =
            |ms: Option<u64>| ms.map_or("-".to_owned(), |ms| format!("{:.1}", ms as f64 / 1000.0));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## Chaos run {} ({})\n",
            self.run_id,
            if self.short { "short" } else { "full" }
        );
        let _ = writeln!(
            out,
            "{} clients x {} commands/s at most, {} accounts, {:.0} s of load: {} commands, {} accepted, {} rejected {:?}, {} without a definite answer in {} s, {} needed more than one attempt. Settled: {} after {:.1} s{}.\n",
            self.clients,
            self.rate_per_client,
            self.accounts,
            self.load_ms as f64 / 1000.0,
            self.commands,
            self.accepted,
            self.rejected.values().sum::<u64>(),
            self.rejected,
            self.unanswered,
            self.answer_within_s,
            self.retried,
            if self.settled { "yes" } else { "NO" },
            self.settle_ms as f64 / 1000.0,
            self.backlog
                .as_ref()
                .filter(|_| !self.settled)
                .map(|b| format!(
                    " (last seen: store {} events, stream {}, {} transfers unfinished, {} read-model rows behind)",
                    b.store_events, b.stream_messages, b.unfinished_transfers, b.read_models_behind
                ))
                .unwrap_or_default()
        );
        let _ = writeln!(out, "| invariant | result | detail |\n|---|---|---|");
        for c in &self.checks {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                c.name,
                if c.ok { "ok" } else { "FAILED" },
                c.detail.replace('|', "/")
            );
        }
        if !self.faults.is_empty() {
            let _ = writeln!(
                out,
                "\nTimes in seconds since the load started; outage = kill to the first accepted reply to a command sent after it.\n"
            );
            let _ = writeln!(
                out,
                "| fault | target | killed | taken over | restarted | back | outage s | longest wait s | no answer in {} s | error |\n|---|---|---|---|---|---|---|---|---|---|",
                self.answer_within_s
            );
            for f in &self.faults {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    f.fault.kind.label(),
                    f.fault.target,
                    secs(f.fault.killed_ms),
                    secs(f.fault.took_over_ms),
                    secs(f.fault.restarted_ms),
                    secs(f.fault.back_ms),
                    f.fault
                        .killed_ms
                        .map_or("-".to_owned(), |_| secs(f.outage_ms)),
                    secs(Some(f.longest_wait_ms)),
                    f.unanswered.len(),
                    f.fault.error.as_deref().unwrap_or("").replace('|', "/")
                );
            }
        }
        out
    }

    /// Writes `<dir>/<UTC time>-chaos.md` and `.json`; their paths.
    pub fn save(&self, dir: &Path) -> anyhow::Result<Vec<String>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let stem = format!("{}-chaos", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"));
        let md = dir.join(format!("{stem}.md"));
        let json = dir.join(format!("{stem}.json"));
        std::fs::write(&md, self.markdown())
            .with_context(|| format!("writing {}", md.display()))?;
        std::fs::write(&json, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", json.display()))?;
        Ok(vec![md.display().to_string(), json.display().to_string()])
    }
}
