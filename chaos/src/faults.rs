//! The faults: which process to kill when, and for how long, and carrying that out through
//! `./dev cluster kill|start|ps` only (all knowledge of processes and pid files stays in `./dev`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::time::Instant;

use crate::model::{PsLine, parse_ps, with_role};

/// Every `./dev cluster` call is given at most this long (a `start` waits for readiness).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the fault driver looks at `./dev cluster ps` while it waits for a role change.
const PS_POLL: Duration = Duration::from_millis(500);
/// The longest the driver waits for the standby to take over, or for a node to come back.
const ROLE_WAIT_MAX: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// The NATS node that leads `TALLY_EVENTS`.
    NatsLeader,
    /// The PostgreSQL primary (pg-1 or pg-2); restarted once the standby has taken over.
    PgPrimary,
    CommandService,
    Projections,
    ProcessManager,
    QueryService,
}

impl FaultKind {
    pub const ALL: [FaultKind; 6] = [
        FaultKind::NatsLeader,
        FaultKind::PgPrimary,
        FaultKind::CommandService,
        FaultKind::Projections,
        FaultKind::ProcessManager,
        FaultKind::QueryService,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FaultKind::NatsLeader => "nats leader",
            FaultKind::PgPrimary => "pg primary",
            FaultKind::CommandService => "command-service",
            FaultKind::Projections => "projections",
            FaultKind::ProcessManager => "process-manager",
            FaultKind::QueryService => "query-service",
        }
    }
}

/// One planned fault: kill at `at_s` after the load started, restart `down_s` later (for the
/// PostgreSQL primary: once the standby is primary, or `down_s` at the latest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Planned {
    pub kind: FaultKind,
    pub at_s: u64,
    pub down_s: u64,
    /// Which service instance (1 or 2); ignored for NATS and PostgreSQL.
    pub instance: u8,
}

/// The plan. Short: one fault of each kind, the slow ones (PostgreSQL failover, NATS leader
/// election) first and overlapping the service kills, so the whole load fits in about a
/// minute. Long: every kind alone, spaced out, then rounds of two or three at once, until
/// `seconds` minus a quiet tail in which the last faults heal.
pub fn plan(short: bool, seconds: u64) -> Vec<Planned> {
    let p = |kind, at_s, down_s, instance| Planned {
        kind,
        at_s,
        down_s,
        instance,
    };
    use FaultKind::*;
    if short {
        return vec![
            p(PgPrimary, 4, 45, 1),
            p(NatsLeader, 8, 8, 1),
            p(CommandService, 20, 6, 1),
            p(Projections, 20, 6, 2),
            p(ProcessManager, 30, 6, 1),
            p(QueryService, 30, 6, 2),
        ];
    }
    let mut out = Vec::new();
    // One at a time: each alone, with room to see its outage and recover.
    let mut t = 10;
    for (i, kind) in FaultKind::ALL.into_iter().enumerate() {
        let down = match kind {
            PgPrimary => 60,
            NatsLeader => 10,
            _ => 8,
        };
        // A run too short for every kind alone does the ones that fit.
        if t + down + 15 <= seconds {
            out.push(p(kind, t, down, 1 + (i % 2) as u8));
        }
        t += if kind == PgPrimary { 75 } else { 25 };
    }
    // Then overlapping rounds, while the run lasts (the last 45 s stay quiet so every fault
    // has healed before the load stops).
    let rounds: [&[FaultKind]; 3] = [
        &[NatsLeader, CommandService, Projections],
        &[PgPrimary, ProcessManager, QueryService],
        &[NatsLeader, PgPrimary, CommandService],
    ];
    let end = seconds.saturating_sub(45);
    let mut round = 0usize;
    loop {
        let kinds = rounds[round % rounds.len()];
        let has_pg = kinds.contains(&PgPrimary);
        let span = if has_pg { 75 } else { 30 };
        if t + span > end {
            break;
        }
        for (j, kind) in kinds.iter().enumerate() {
            let down = match kind {
                PgPrimary => 60,
                NatsLeader => 10,
                _ => 8,
            };
            out.push(p(
                *kind,
                t + 2 * j as u64,
                down,
                2 - ((round + j) % 2) as u8,
            ));
        }
        t += span;
        round += 1;
    }
    out
}

/// `./dev cluster <verb> [name]`.
#[derive(Debug, Clone)]
pub struct Control {
    pub dev: PathBuf,
}

impl Control {
    async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut command = tokio::process::Command::new(&self.dev);
        command
            .arg("cluster")
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(CONTROL_TIMEOUT, command.output())
            .await
            .with_context(|| {
                format!(
                    "./dev cluster {} took over {CONTROL_TIMEOUT:?}",
                    args.join(" ")
                )
            })?
            .with_context(|| format!("running {}", self.dev.display()))?;
        if !output.status.success() {
            bail!(
                "./dev cluster {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    pub async fn ps(&self) -> anyhow::Result<Vec<PsLine>> {
        Ok(parse_ps(&self.run(&["ps"]).await?))
    }

    pub async fn kill(&self, name: &str) -> anyhow::Result<()> {
        self.run(&["kill", name]).await.map(drop)
    }

    pub async fn start(&self, name: &str) -> anyhow::Result<()> {
        self.run(&["start", name]).await.map(drop)
    }

    /// Polls `ps` until `pred` holds; how long it took, or `None` after [`ROLE_WAIT_MAX`].
    async fn wait_for(&self, pred: impl Fn(&[PsLine]) -> bool) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < ROLE_WAIT_MAX {
            if let Ok(ps) = self.ps().await
                && pred(&ps)
            {
                return Some(started.elapsed());
            }
            tokio::time::sleep(PS_POLL).await;
        }
        None
    }
}

/// Finds the NATS leader and the PostgreSQL primary without `./dev cluster ps` (which asks
/// every process and takes seconds on a loaded machine): the stream info's cluster leader (a
/// server name, `nats-N` by the topology contract) and the first host of the multi-host URL
/// that is not in recovery (host i is `pg-i` by the contract).
#[derive(Debug, Clone)]
pub struct Probe {
    pub nats: async_nats::Client,
    pub database_url: String,
}

impl Probe {
    pub async fn nats_leader(&self) -> Option<String> {
        let js = async_nats::jetstream::new(self.nats.clone());
        let mut stream = tokio::time::timeout(PS_POLL * 4, js.get_stream("TALLY_EVENTS"))
            .await
            .ok()?
            .ok()?;
        let info = tokio::time::timeout(PS_POLL * 4, stream.info())
            .await
            .ok()?
            .ok()?;
        info.cluster.as_ref()?.leader.clone()
    }

    pub async fn pg_primary(&self) -> Option<String> {
        let (i, _) = crate::checks::primary_index(&self.database_url)
            .await
            .ok()?;
        Some(format!("pg-{}", i + 1))
    }

    async fn wait_for_other(&self, kind: FaultKind, killed: &str, max: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < max {
            let now = match kind {
                FaultKind::NatsLeader => self.nats_leader().await,
                _ => self.pg_primary().await,
            };
            if now.is_some_and(|n| n != killed) {
                return true;
            }
            tokio::time::sleep(PS_POLL).await;
        }
        false
    }
}

/// What happened to one planned fault. Times in ms since the load started.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub target: String,
    pub killed_ms: Option<u64>,
    /// PostgreSQL: the other node reported primary; NATS: another node leads the stream.
    pub took_over_ms: Option<u64>,
    pub restarted_ms: Option<u64>,
    /// The restarted process is back in a role (up, follower, standby).
    pub back_ms: Option<u64>,
    pub error: Option<String>,
}

fn ms_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Carries out one planned fault, relative to `start` (when the load began).
pub async fn inject(
    control: &Control,
    probe: &Probe,
    planned: Planned,
    start: Instant,
) -> FaultRecord {
    tokio::time::sleep_until(start + Duration::from_secs(planned.at_s)).await;
    let mut record = FaultRecord {
        kind: planned.kind,
        target: String::new(),
        killed_ms: None,
        took_over_ms: None,
        restarted_ms: None,
        back_ms: None,
        error: None,
    };
    if let Err(error) = inject_inner(control, probe, planned, start, &mut record).await {
        record.error = Some(format!("{error:#}"));
    }
    record
}

async fn inject_inner(
    control: &Control,
    probe: &Probe,
    planned: Planned,
    start: Instant,
    record: &mut FaultRecord,
) -> anyhow::Result<()> {
    let target = match planned.kind {
        FaultKind::NatsLeader | FaultKind::PgPrimary => {
            let (prefix, role) = match planned.kind {
                FaultKind::NatsLeader => ("nats-", "leader"),
                _ => ("pg-", "primary"),
            };
            let fast = match planned.kind {
                FaultKind::NatsLeader => probe.nats_leader().await,
                _ => probe.pg_primary().await,
            };
            match fast {
                Some(name) => name,
                None => {
                    // The role can be briefly unknown (an election, a failover): ask ./dev.
                    let mut found = None;
                    for _ in 0..20 {
                        if let Some(line) = with_role(&control.ps().await?, prefix, role) {
                            found = Some(line.name.clone());
                            break;
                        }
                        tokio::time::sleep(PS_POLL).await;
                    }
                    found.with_context(|| {
                        format!("no {prefix}* process is {role} in ./dev cluster ps")
                    })?
                }
            }
        }
        FaultKind::CommandService => format!("command-service-{}", planned.instance),
        FaultKind::Projections => format!("projections-{}", planned.instance),
        FaultKind::ProcessManager => format!("process-manager-{}", planned.instance),
        FaultKind::QueryService => format!("query-service-{}", planned.instance),
    };
    record.target = target.clone();
    // Taken when the kill is issued: `./dev cluster kill` sends the signal first and then
    // waits for the processes to be gone, which can take seconds on a loaded machine.
    let killed_ms = ms_since(start);
    control.kill(&target).await?;
    record.killed_ms = Some(killed_ms);
    let down = Duration::from_secs(planned.down_s);
    match planned.kind {
        FaultKind::PgPrimary => {
            // Restart the old primary only once the standby took over (it then rejoins as the
            // new standby), or when the bound runs out.
            if probe.wait_for_other(planned.kind, &target, down).await {
                record.took_over_ms = Some(ms_since(start));
            }
        }
        FaultKind::NatsLeader => {
            if probe.wait_for_other(planned.kind, &target, down).await {
                record.took_over_ms = Some(ms_since(start));
            }
            tokio::time::sleep_until(start + Duration::from_millis(killed_ms) + down).await;
        }
        _ => tokio::time::sleep(down).await,
    }
    control.start(&target).await?;
    record.restarted_ms = Some(ms_since(start));
    let name = target.clone();
    let back = control
        .wait_for(move |ps| {
            ps.iter().any(|l| {
                l.name == name && l.pid.is_some() && !matches!(l.role.as_str(), "down" | "-")
            })
        })
        .await;
    if back.is_some() {
        record.back_ms = Some(ms_since(start));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_short_plan_has_one_fault_of_each_kind_and_heals_within_a_minute() {
        let plan = plan(true, 0);
        for kind in FaultKind::ALL {
            assert_eq!(
                plan.iter().filter(|p| p.kind == kind).count(),
                1,
                "{kind:?}"
            );
        }
        assert!(plan.iter().all(|p| p.at_s + p.down_s <= 60), "{plan:?}");
    }

    #[test]
    fn the_long_plan_starts_alone_then_overlaps_and_stays_in_bounds() {
        let seconds = 600;
        let plan = plan(false, seconds);
        // The first six are one of each kind, none overlapping the next.
        for pair in plan[..6].windows(2) {
            assert!(pair[0].at_s + pair[0].down_s < pair[1].at_s, "{pair:?}");
        }
        assert!(plan.len() > 6, "overlapping rounds follow: {plan:?}");
        assert!(
            plan[6..]
                .windows(2)
                .any(|w| w[1].at_s < w[0].at_s + w[0].down_s)
        );
        assert!(
            plan.iter().all(|p| p.at_s + p.down_s <= seconds),
            "{plan:?}"
        );
    }
}
