//! Hands back to the system the memory glibc's allocator keeps after a burst, once the service
//! is quiet again. glibc returns freed memory only from the top of each arena, so a service that
//! peaked under load stays resident near its peak while idle: the command-service sat at
//! 64.8 MiB after the benchmark suite and at 53.2 MiB after one `malloc_trim(0)`. The trim runs
//! only after a quiet interval that followed a busy one, never under load (it walks and locks
//! every arena in turn, stalling threads that allocate meanwhile).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the process's CPU time is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(10);
/// At or below this share of one core over the last interval, the process counts as quiet.
const QUIET_CPU_SHARE: f64 = 0.02;

/// Trims after every busy spell, when the interval after it was quiet, until `shutdown`.
pub async fn run(shutdown: CancellationToken) {
    let mut checks = tokio::time::interval(CHECK_EVERY);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pid = std::process::id();
    let mut spent = crate::process_stat::cpu_seconds(pid);
    // Start-up itself (migrations, stream set-up) counts as the first busy spell.
    let mut busy_since_trim = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = checks.tick() => {}
        }
        let now = crate::process_stat::cpu_seconds(pid);
        let quiet = match (spent, now) {
            (Some(before), Some(after)) => is_quiet(after - before, CHECK_EVERY),
            _ => false,
        };
        spent = now;
        if !quiet {
            busy_since_trim = true;
        } else if busy_since_trim {
            busy_since_trim = false;
            let released = tokio::task::spawn_blocking(release_free_memory)
                .await
                .unwrap_or(false);
            tracing::debug!(
                released,
                "returned the allocator's free memory to the system"
            );
        }
    }
}

fn is_quiet(cpu_seconds: f64, over: Duration) -> bool {
    cpu_seconds <= over.as_secs_f64() * QUIET_CPU_SHARE
}

/// Whether glibc gave any memory back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_free_memory() -> bool {
    // SAFETY: `malloc_trim` takes no pointers and touches only glibc's own free lists, under
    // the arenas' locks like every other allocator call.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators (musl, macOS) return large free blocks themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_is_at_most_two_percent_of_a_core() {
        assert!(is_quiet(0.0, CHECK_EVERY));
        assert!(is_quiet(0.2, CHECK_EVERY));
        assert!(!is_quiet(0.21, CHECK_EVERY));
        assert!(!is_quiet(5.0, CHECK_EVERY));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_goes_back_to_the_system() {
        // Many small blocks, freed except every 64th: the freed ones cannot leave from the top
        // of the heap, so only a trim returns their pages.
        let resident = || -> Option<u64> {
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        };
        let mut blocks: Vec<Vec<u8>> = (0..200_000).map(|i| vec![i as u8; 512]).collect();
        let kept: Vec<Vec<u8>> = blocks.iter().step_by(64).cloned().collect();
        blocks.clear();
        blocks.shrink_to_fit();
        let before = resident();
        release_free_memory();
        let after = resident();
        drop(kept);
        let (Some(before), Some(after)) = (before, after) else {
            panic!("no VmRSS in /proc/self/status");
        };
        assert!(
            after + 20_000 < before,
            "a trim should return tens of MiB: {before} kB before, {after} kB after"
        );
    }
}
