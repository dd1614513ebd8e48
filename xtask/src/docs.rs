//! `cargo xtask docs`: the generated parts of `docs/configuration.md`, built from each service's
//! `clap` definition (its `Config`) and from the `tally` CLI's (`cli::command()`), so the
//! settings reference cannot drift from the code.
//!
//! Only the text between each pair of markers is generated; the prose around it is written by
//! hand.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, bail};
use clap::CommandFactory;

/// The file holding the generated tables, relative to the repository root.
pub const CONFIGURATION: &str = "docs/configuration.md";
const BEGIN: &str = "<!-- BEGIN GENERATED: `cargo xtask docs` writes this part from the services' clap definitions; edit those, not this -->";
const BEGIN_CLI: &str = "<!-- BEGIN GENERATED CLI: `cargo xtask docs` writes this part from the CLI's clap definition; edit that, not this -->";
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
    /// `None` only for the CLI's global flags that have no environment variable.
    env: Option<String>,
    flag: String,
    /// A switch (`--json`): present or absent, no value; its default is "off".
    switch: bool,
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
                env: Some(env.to_string_lossy().into_owned()),
                flag: flag.to_owned(),
                switch: is_switch(arg),
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

/// Whether `arg` is a switch (`--json`), present or absent, rather than a flag taking a value.
fn is_switch(arg: &clap::Arg) -> bool {
    !arg.get_action().takes_values()
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
    if is_switch(arg) {
        return meaning;
    }
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
        out.push_str(&table(&heading, &settings));
    }
    out.push('\n');
    Ok(out)
}

/// A `### heading` and the settings' table.
fn table(heading: &str, settings: &[&Setting]) -> String {
    let mut out = format!("\n### {heading}\n\n");
    out.push_str("| variable | flag | default | meaning |\n|---|---|---|---|\n");
    for setting in settings {
        let env = match setting.env.as_deref() {
            None => String::new(),
            Some(env) => format!("`{}`", cell(env)),
        };
        let default = match setting.default.as_deref() {
            _ if setting.switch => "off".to_owned(),
            None => "unset".to_owned(),
            Some("") => "empty".to_owned(),
            Some(value) => format!("`{}`", cell(value)),
        };
        out.push_str(&format!(
            "| {env} | `--{}` | {default} | {} |\n",
            cell(&setting.flag),
            cell(&setting.meaning)
        ));
    }
    out
}

/// The CLI's settings: its global flags (every command takes them, environment variable or
/// not), then every other flag that has an environment variable, wherever in the command tree
/// it is defined, once each. Each comes with the commands (paths below `tally`) that read it.
fn cli_settings(root: &clap::Command) -> anyhow::Result<Vec<(Setting, BTreeSet<String>)>> {
    let mut rows: Vec<(Setting, BTreeSet<String>)> = Vec::new();
    let mut found = Vec::new();
    collect_cli_args(root, "", &mut found);
    for (path, arg) in found {
        let id = arg.get_id().as_str();
        let where_ = if path.is_empty() {
            "tally".to_owned()
        } else {
            format!("tally {path}")
        };
        let flag = arg
            .get_long()
            .with_context(|| format!("{where_}: setting `{id}` has no long flag"))?;
        let Some(help) = arg.get_long_help().or(arg.get_help()) else {
            bail!("{where_}: --{flag} has no doc comment");
        };
        let setting = Setting {
            env: arg.get_env().map(|env| env.to_string_lossy().into_owned()),
            flag: flag.to_owned(),
            switch: is_switch(arg),
            default: default_of(arg),
            meaning: meaning_of(&help.to_string(), arg),
        };
        match rows
            .iter_mut()
            .find(|(known, _)| known.env == setting.env && known.env.is_some())
        {
            // One program: one variable means one thing wherever it is read.
            Some((known, _)) if *known != setting => bail!(
                "{where_}: --{flag} reads {} like another command's --{} but is defined \
                 differently; define it once (a shared `clap::Args`)",
                setting.env.as_deref().unwrap_or_default(),
                known.flag
            ),
            Some((_, readers)) => {
                readers.insert(path);
            }
            None => rows.push((setting, BTreeSet::from([path]))),
        }
    }
    Ok(rows)
}

/// `(path, arg)` for the global flags of `command` (the root) and, below it, every flag with
/// an environment variable. `path` is the space-separated subcommand path, empty for the root.
fn collect_cli_args<'a>(
    command: &'a clap::Command,
    path: &str,
    found: &mut Vec<(String, &'a clap::Arg)>,
) {
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" || arg.is_hide_set() || arg.is_positional() {
            continue;
        }
        // Globals are defined on the root and propagated only when clap builds the command.
        let global = path.is_empty() && arg.is_global_set();
        if global || arg.get_env().is_some() {
            found.push((path.to_owned(), arg));
        }
    }
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        collect_cli_args(sub, &join(path, sub.get_name()), found);
    }
}

/// Whether `command` (at `path`) reads a setting read by `readers`: it is one of them, or each
/// of its subcommands is.
fn covered(command: &clap::Command, path: &str, readers: &BTreeSet<String>) -> bool {
    readers.contains(path) || {
        let mut subs = command
            .get_subcommands()
            .filter(|sub| !sub.is_hide_set())
            .peekable();
        subs.peek().is_some() && subs.all(|sub| covered(sub, &join(path, sub.get_name()), readers))
    }
}

/// The path of the subcommand `name` of the command at `path`.
fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path} {name}")
    }
}

/// The commands reading a setting, as few as say it: `tally dlq …` when every `dlq` command
/// does, `tally audit verify` when only that one does, `tally token mint` rather than
/// `tally token …` when that is the only `token` command.
fn command_names(
    command: &clap::Command,
    path: &str,
    readers: &BTreeSet<String>,
    out: &mut Vec<String>,
) {
    let subcommands = command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .count();
    if covered(command, path, readers) && subcommands != 1 {
        out.push(if subcommands == 0 {
            format!("`tally {path}`")
        } else {
            format!("`tally {path} …`")
        });
        return;
    }
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        command_names(sub, &join(path, sub.get_name()), readers, out);
    }
}

/// The CLI's generated markdown: one table per set of commands reading the same settings, the
/// ones every command takes first.
fn render_cli() -> anyhow::Result<String> {
    let root = cli::command();
    let rows = cli_settings(&root)?;
    let mut groups: Vec<(&BTreeSet<String>, Vec<&Setting>)> = Vec::new();
    for (setting, readers) in &rows {
        match groups.iter_mut().find(|(known, _)| *known == readers) {
            Some((_, settings)) => settings.push(setting),
            None => groups.push((readers, vec![setting])),
        }
    }
    let mut out = String::new();
    for (readers, settings) in groups {
        let heading = if covered(&root, "", readers) {
            "Every command".to_owned()
        } else {
            let mut names = Vec::new();
            command_names(&root, "", readers, &mut names);
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            english_list(&names)
        };
        out.push_str(&table(&heading, &settings));
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

/// `text` with the part between `begin` and the next end marker replaced by `generated`.
fn splice(text: &str, begin: &str, generated: &str) -> anyhow::Result<String> {
    let start = text
        .find(begin)
        .with_context(|| format!("{CONFIGURATION}: no line `{begin}`"))?
        + begin.len();
    let end = text[start..]
        .find(END)
        .with_context(|| format!("{CONFIGURATION}: no line `{END}` after the line `{begin}`"))?
        + start;
    Ok(format!("{}\n{generated}{}", &text[..start], &text[end..]))
}

/// Regenerates the tables (or, with `check`, fails when they are stale).
pub fn run(root: &Path, check: bool) -> anyhow::Result<()> {
    let path = root.join(CONFIGURATION);
    let current =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let wanted = splice(&current, BEGIN, &render()?)?;
    let wanted = splice(&wanted, BEGIN_CLI, &render_cli()?)?;
    match (check, current == wanted) {
        (_, true) => eprintln!("docs: up to date"),
        (true, false) => {
            bail!(
                "{CONFIGURATION}: the tables differ from the services' and the CLI's settings; run `cargo xtask docs`"
            )
        }
        (false, false) => {
            std::fs::write(&path, wanted).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("docs: wrote {CONFIGURATION}");
        }
    }
    Ok(())
}
