//! Finding the server binaries: explicit environment first, then what `./dev` installs, then
//! the usual system places.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root (this crate lives in `<root>/tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `TALLY_NATS_SERVER`, else `.dev/bin/nats-server` (installed by `./dev`), else `PATH`.
pub fn nats_server() -> PathBuf {
    if let Some(path) = std::env::var_os("TALLY_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let dev = repo_root().join(".dev/bin/nats-server");
    if dev.exists() {
        return dev;
    }
    PathBuf::from("nats-server")
}

/// The directory holding `initdb`, `postgres` and `pg_isready`: `TALLY_PG_BINDIR`, else the
/// newest `/usr/lib/postgresql/<major>/bin` (Debian), else `pg_config --bindir`.
pub fn postgres_bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TALLY_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return bin;
    }
    Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| PathBuf::from(s.trim()))
        .unwrap_or_else(|| PathBuf::from("/usr/bin"))
}

/// A binary of this workspace (`command-service` ...), built next to the test binary.
pub fn workspace_binary(name: &str) -> PathBuf {
    // target/<profile>/deps/it-<hash> -> target/<profile>/<name>
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    profile_dir.join(name)
}
