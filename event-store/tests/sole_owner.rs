//! The event store's tables have one owner: no source outside `event-store/` runs a statement
//! on them (migrations create them; the integration tests' assertions, and the chaos tool's
//! checks, which must judge the store without trusting the code they judge, may read them).

#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};

const TABLES: [&str; 4] = [
    "events",
    "command_log",
    "aggregate_snapshots",
    "relay_checkpoints",
];
const VERBS: [&str; 6] = ["FROM", "INTO", "UPDATE", "JOIN", "TABLE", "LIKE"];

fn rust_sources(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// `VERB table` with any whitespace between, the table name ending there.
fn names_a_table(text: &str) -> Option<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words.windows(2).find_map(|pair| {
        // SQL keywords are written in capitals here; prose says "like `events`".
        let table = pair[1].trim_matches(|c: char| !(c.is_alphanumeric() || c == '_'));
        (VERBS.contains(&pair[0]) && TABLES.contains(&table))
            .then(|| format!("{} {}", pair[0], pair[1]))
    })
}

#[test]
fn no_crate_but_event_store_runs_sql_on_its_tables() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(root).expect("the workspace").flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // This crate is the owner; `tests/` asserts on what was stored, and `chaos/` checks it
        // after a fault run with SQL of its own, independent of this crate's; `target/` is built.
        if ["event-store", "tests", "chaos", "target"].contains(&name.as_ref())
            || name.starts_with('.')
        {
            continue;
        }
        rust_sources(&entry.path(), &mut sources);
    }
    assert!(sources.len() > 50, "found only {} sources", sources.len());
    let offenders: Vec<String> = sources
        .iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(path).ok()?;
            names_a_table(&text).map(|found| format!("{}: {found}", path.display()))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "SQL on the event store's tables outside event-store/: {offenders:#?}"
    );
}

#[test]
fn the_check_sees_a_statement() {
    assert!(names_a_table("SELECT count(*) FROM events WHERE true").is_some());
    assert!(names_a_table("INSERT INTO command_log (command_id)").is_some());
    assert!(names_a_table("UPDATE\n relay_checkpoints SET").is_some());
    assert!(names_a_table("FROM events_archive").is_none());
    assert!(names_a_table("the events table").is_none());
    assert!(names_a_table("shaped like `events`").is_none());
}
