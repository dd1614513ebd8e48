//! A process's CPU time from `/proc/<pid>/stat` (user + system ticks): what the allocator trim
//! watches to tell a quiet service from a busy one, and what the benchmark reads per process.

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on every Linux we run on).
const TICKS_PER_S: f64 = 100.0;

/// CPU seconds `pid` has used so far (all its threads), if `/proc` has it.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// utime + stime of a `/proc/<pid>/stat` line; the command name may hold spaces, so fields are
/// counted from its closing parenthesis.
pub fn parse_stat(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ")": state is field 3 of the line, utime field 14, stime field 15.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_S)
}

/// The parent pid of a `/proc/<pid>/stat` line.
pub fn parent_pid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_ticks_and_the_parent() {
        let stat = "42 (tokio runtime) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0";
        assert_eq!(parse_stat(stat), Some(3.0));
        assert_eq!(parent_pid(stat), Some(1));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        let spent = cpu_seconds(std::process::id());
        assert!(spent.is_some_and(|s| s >= 0.0), "{spent:?}");
    }
}
