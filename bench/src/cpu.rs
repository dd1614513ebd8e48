//! CPU time each process of the stack spends, from `/proc/<pid>/stat` (user + system ticks):
//! read before and after a scenario, it says where the machine's two cores went per command.

use std::collections::BTreeMap;
use std::path::Path;

use platform::process_stat::{cpu_seconds, parent_pid};

use crate::memory::SERVICES;

/// CPU seconds used so far by each process group of the stack: the services, nats-server, all
/// of PostgreSQL (postmaster and its backends) and this benchmark itself.
#[derive(Debug, Clone, Default)]
pub struct Usage(BTreeMap<String, f64>);

impl Usage {
    pub fn now(run_dir: &Path) -> Usage {
        let mut groups = BTreeMap::new();
        let pid_of = |name: &str| {
            std::fs::read_to_string(run_dir.join(format!("{name}.pid")))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
        };
        for service in SERVICES {
            if let Some(seconds) = pid_of(service).and_then(cpu_seconds) {
                groups.insert(service.to_owned(), seconds);
            }
        }
        if let Some(seconds) = pid_of("nats").and_then(cpu_seconds) {
            groups.insert("nats-server".to_owned(), seconds);
        }
        // `./dev up` records where the cluster's data directory is; its first line of
        // postmaster.pid is the postmaster's pid.
        let postmaster = std::fs::read_to_string(run_dir.join("pgdata"))
            .ok()
            .and_then(|dir| {
                std::fs::read_to_string(Path::new(dir.trim()).join("postmaster.pid")).ok()
            })
            .and_then(|f| f.lines().next()?.trim().parse::<u32>().ok());
        if let Some(postmaster) = postmaster {
            let backends: f64 = children(postmaster)
                .into_iter()
                .chain([postmaster])
                .filter_map(cpu_seconds)
                .sum();
            groups.insert("postgres".to_owned(), backends);
        }
        if let Some(seconds) = cpu_seconds(std::process::id()) {
            groups.insert("tally-bench".to_owned(), seconds);
        }
        Usage(groups)
    }

    /// CPU seconds each group spent since `before`.
    pub fn since(&self, before: &Usage) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .map(|(name, now)| {
                (
                    name.clone(),
                    now - before.0.get(name).copied().unwrap_or(0.0),
                )
            })
            .collect()
    }
}

fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parent_pid(&s))
                == Some(parent)
        })
        .collect()
}
