//! Repository automation (matklad's xtask pattern): `cargo xtask <task>`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

mod docs;

#[derive(Debug, Parser)]
#[command(about = "Tally repository tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Regenerate `schemas/` from the Rust types: commands, events, replies, and the HTTP
    /// API's OpenAPI document.
    Schemas {
        /// Only check; exit non-zero when a file would change.
        #[arg(long)]
        check: bool,
    },
    /// Regenerate the settings tables of `docs/configuration.md` from the services' and the
    /// `tally` CLI's clap definitions (the prose around them is hand-written).
    Docs {
        /// Only check; exit non-zero when the file would change.
        #[arg(long)]
        check: bool,
    },
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn schemas(check: bool) -> anyhow::Result<()> {
    let dir = repo_root().join("schemas");
    let mut changed = Vec::new();
    let openapi = domain::schema::SchemaFile {
        path: "openapi.json".to_owned(),
        contents: query_service::openapi::document(),
    };
    for file in domain::schema::all()
        .into_iter()
        .chain(std::iter::once(openapi))
    {
        let path = dir.join(&file.path);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == file.contents {
            continue;
        }
        changed.push(file.path.clone());
        if !check {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&path, &file.contents)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    match (check, changed.is_empty()) {
        (_, true) => eprintln!("schemas: up to date"),
        (true, false) => anyhow::bail!("schemas are stale: {changed:?}; run `cargo xtask schemas`"),
        (false, false) => eprintln!("schemas: wrote {changed:?}"),
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Schemas { check } => schemas(check),
        Task::Docs { check } => docs::run(&repo_root(), check),
    }
}
