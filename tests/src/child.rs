//! Spawning server processes that cannot outlive the test process.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// The uid/gid to run PostgreSQL as when we are root (it refuses to run as root).
#[derive(Debug, Clone, Copy)]
pub struct Unprivileged {
    pub uid: u32,
    pub gid: u32,
}

/// `nobody` when running as root, `None` otherwise.
#[allow(unsafe_code)]
pub fn unprivileged_user_if_root() -> Option<Unprivileged> {
    // SAFETY: geteuid has no preconditions; getpwnam returns a pointer to static storage that we
    // read immediately, before any other call could overwrite it.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let pw = libc::getpwnam(c"nobody".as_ptr());
        if pw.is_null() {
            return None;
        }
        Some(Unprivileged {
            uid: (*pw).pw_uid,
            gid: (*pw).pw_gid,
        })
    }
}

/// Spawns `command` so that the kernel SIGKILLs it when the spawning thread's process dies.
///
/// Linux delivers the parent-death signal when the *thread* that forked the child exits, so
/// callers spawn from a thread that lives as long as the process (see `servers.rs`).
#[allow(unsafe_code)]
pub fn spawn_tied_to_parent(
    command: &mut Command,
    run_as: Option<Unprivileged>,
) -> std::io::Result<Child> {
    if let Some(user) = run_as {
        command.uid(user.uid).gid(user.gid);
    }
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // functions (prctl, getppid, kill/raise via the return path).
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Whether a process is still running (not a zombie).
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; `Z` is a zombie, `X` dead.
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// A free TCP port on 127.0.0.1 (bound then released; the server binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_for_port(port: u16, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    false
}
