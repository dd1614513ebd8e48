//! Resident memory of the stack's services, from `/proc/<pid>/status` of the pids `./dev up`
//! recorded: the current RSS (`VmRSS`) and the peak since the process started (`VmHWM`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

pub const SERVICES: [&str; 4] = [
    "command-service",
    "projections",
    "process-manager",
    "query-service",
];

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rss {
    pub rss_mib: f64,
    pub peak_mib: f64,
}

/// Each running service's memory; services without a live pid are left out.
pub fn services(run_dir: &Path) -> BTreeMap<String, Rss> {
    SERVICES
        .iter()
        .filter_map(|service| {
            let pid = std::fs::read_to_string(run_dir.join(format!("{service}.pid"))).ok()?;
            let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).ok()?;
            Some(((*service).to_owned(), parse(&status)?))
        })
        .collect()
}

fn parse(status: &str) -> Option<Rss> {
    let kib = |field: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse::<f64>().ok()
    };
    Some(Rss {
        rss_mib: kib("VmRSS:")? / 1024.0,
        peak_mib: kib("VmHWM:")? / 1024.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_status() {
        let status = "Name:\tx\nVmHWM:\t  20480 kB\nVmRSS:\t  10240 kB\n";
        let rss = parse(status).unwrap_or_default();
        assert_eq!(rss.rss_mib, 10.0);
        assert_eq!(rss.peak_mib, 20.0);
        assert!(parse("Name:\tx\n").is_none());
    }
}
