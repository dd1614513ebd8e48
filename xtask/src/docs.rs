//! `cargo xtask docs`: the generated part of `docs/configuration.md`, built from each service's
//! `clap` definition (its `Config`), so the settings reference cannot drift from the code.
//!
//! Only the text between the markers is generated; the prose around it is written by hand.

use std::path::Path;

use anyhow::{Context, bail};
use clap::CommandFactory;

/// The file holding the generated tables, relative to the repository root.
pub const CONFIGURATION: &str = "docs/configuration.md";
const BEGIN: &str = "<!-- BEGIN GENERATED: `cargo xtask docs` writes this part from the services' clap definitions; edit those, not this -->";
const END: &str = "<!-- END GENERATED -->";

/// Each service's name and its settings, in the order the tables list them.
fn services() -> Vec<(&'static str, clap::Command)> {
    vec![
        ("command-service", command_service::Config::command()),
        ("projections", projections::Config::command()),
        ("process-manager", process_manager::Config::command()),
        ("query-service", query_service::Config::command()),
    ]
}

/// One setting as the reference shows it; services that read it alike share one row.
#[derive(Debug, PartialEq, Eq)]
struct Setting {
    env: String,
    flag: String,
    default: Option<String>,
    meaning: String,
}

/// Every setting of every service, in definition order, with the services that read it.
fn settings() -> anyhow::Result<Vec<(Setting, Vec<&'static str>)>> {
    let mut rows: Vec<(Setting, Vec<&'static str>)> = Vec::new();
    for (service, command) in services() {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let flag = arg
                .get_long()
                .with_context(|| format!("{service}: setting `{id}` has no long flag"))?;
            // The house style: every setting is a flag and an environment variable, with a
            // doc comment saying what it means. The reference is only complete if they are.
            let Some(env) = arg.get_env() else {
                bail!("{service}: --{flag} has no environment variable (`env = \"TALLY_…\"`)");
            };
            let Some(help) = arg.get_long_help().or(arg.get_help()) else {
                bail!("{service}: --{flag} has no doc comment");
            };
            let setting = Setting {
                env: env.to_string_lossy().into_owned(),
                flag: flag.to_owned(),
                default: default_of(arg),
                meaning: meaning_of(&help.to_string(), arg),
            };
            match rows.iter_mut().find(|(known, _)| *known == setting) {
                Some((_, readers)) => readers.push(service),
                None => rows.push((setting, vec![service])),
            }
        }
    }
    Ok(rows)
}

fn default_of(arg: &clap::Arg) -> Option<String> {
    let values = arg.get_default_values();
    if values.is_empty() {
        return None;
    }
    Some(
        values
            .iter()
            .map(|value| value.to_string_lossy())
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// The doc comment as one line, followed by the accepted values when clap knows them.
fn meaning_of(help: &str, arg: &clap::Arg) -> String {
    let mut meaning = one_line(help);
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|value| !value.is_hide_set())
        .map(|value| match value.get_help() {
            Some(help) => format!(
                "`{}` ({})",
                value.get_name(),
                lowercase_first(&help.to_string())
            ),
            None => format!("`{}`", value.get_name()),
        })
        .collect();
    if !values.is_empty() {
        meaning.push_str(". Values: ");
        meaning.push_str(&values.join(", "));
    }
    meaning
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn lowercase_first(text: &str) -> String {
    let text = one_line(text);
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        // Leave acronyms (`JWT …`) alone.
        (Some(first), Some(second)) if first.is_uppercase() && !second.is_uppercase() => {
            first.to_lowercase().chain(text.chars().skip(1)).collect()
        }
        _ => text,
    }
}

/// A markdown table cell: no line breaks, and `|` does not end the cell.
fn cell(text: &str) -> String {
    one_line(text).replace('|', "\\|")
}

/// The generated markdown: one table per set of services reading the same settings, the
/// settings every service reads first.
fn render() -> anyhow::Result<String> {
    let count = services().len();
    let rows = settings()?;
    let mut groups: Vec<(&Vec<&'static str>, Vec<&Setting>)> = Vec::new();
    for (setting, readers) in &rows {
        match groups.iter_mut().find(|(known, _)| *known == readers) {
            Some((_, settings)) => settings.push(setting),
            None => groups.push((readers, vec![setting])),
        }
    }
    // Stable: within the same number of services, the order of first appearance.
    groups.sort_by_key(|(readers, _)| std::cmp::Reverse(readers.len()));
    let mut out = String::new();
    for (readers, settings) in groups {
        let heading = if readers.len() == count {
            "Every service".to_owned()
        } else {
            english_list(readers)
        };
        out.push_str(&format!("\n### {heading}\n\n"));
        out.push_str("| variable | flag | default | meaning |\n|---|---|---|---|\n");
        for setting in settings {
            let default = match setting.default.as_deref() {
                None => "unset".to_owned(),
                Some("") => "empty".to_owned(),
                Some(value) => format!("`{}`", cell(value)),
            };
            out.push_str(&format!(
                "| `{}` | `--{}` | {} | {} |\n",
                cell(&setting.env),
                cell(&setting.flag),
                default,
                cell(&setting.meaning)
            ));
        }
    }
    out.push('\n');
    Ok(out)
}

fn english_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// `text` with the part between the markers replaced by `generated`.
fn splice(text: &str, generated: &str) -> anyhow::Result<String> {
    let start = text
        .find(BEGIN)
        .with_context(|| format!("{CONFIGURATION}: no line `{BEGIN}`"))?
        + BEGIN.len();
    let end = text[start..]
        .find(END)
        .with_context(|| format!("{CONFIGURATION}: no line `{END}` after the BEGIN marker"))?
        + start;
    Ok(format!("{}\n{generated}{}", &text[..start], &text[end..]))
}

/// Regenerates the tables (or, with `check`, fails when they are stale).
pub fn run(root: &Path, check: bool) -> anyhow::Result<()> {
    let path = root.join(CONFIGURATION);
    let current =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let wanted = splice(&current, &render()?)?;
    match (check, current == wanted) {
        (_, true) => eprintln!("docs: up to date"),
        (true, false) => {
            bail!(
                "{CONFIGURATION}: the tables differ from the services' settings; run `cargo xtask docs`"
            )
        }
        (false, false) => {
            std::fs::write(&path, wanted).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("docs: wrote {CONFIGURATION}");
        }
    }
    Ok(())
}
