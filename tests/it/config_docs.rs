//! Configuration stays consistent across the code, compose.yaml and docs/configuration.md.
//! (The error codes' reference is kept true by domain/tests/error_codes_documented.rs.)

use std::collections::BTreeSet;

use clap::CommandFactory;
use tests::binaries::repo_root;

fn env_vars(command: clap::Command) -> BTreeSet<String> {
    command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect()
}

fn services() -> Vec<(&'static str, BTreeSet<String>)> {
    vec![
        (
            "command-service",
            env_vars(command_service::Config::command()),
        ),
        ("projections", env_vars(projections::Config::command())),
        (
            "process-manager",
            env_vars(process_manager::Config::command()),
        ),
        ("query-service", env_vars(query_service::Config::command())),
    ]
}

#[test]
fn every_config_is_valid_clap() {
    command_service::Config::command().debug_assert();
    projections::Config::command().debug_assert();
    process_manager::Config::command().debug_assert();
    query_service::Config::command().debug_assert();
}

#[test]
fn compose_sets_only_known_variables_and_everything_needed() {
    let text = std::fs::read_to_string(repo_root().join("compose.yaml")).unwrap();
    let mut compose: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    // Resolve `<<: *tally-env`, as Docker Compose does.
    compose.apply_merge().unwrap();
    for (service, known) in services() {
        let environment = compose["services"][service]["environment"]
            .as_mapping()
            .unwrap_or_else(|| panic!("compose.yaml: service {service} has no environment map"));
        let set: BTreeSet<String> = environment
            .keys()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect();
        let unknown: Vec<_> = set
            .iter()
            .filter(|k| k.starts_with("TALLY_") && !known.contains(*k))
            .collect();
        assert!(
            unknown.is_empty(),
            "compose.yaml sets variables {service} does not read: {unknown:?}"
        );
        for needed in ["TALLY_DATABASE_URL", "TALLY_NATS_URL", "TALLY_LOG_FORMAT"] {
            assert!(
                set.contains(needed),
                "compose.yaml: {service} lacks {needed}"
            );
        }
        // Inside a container the service must listen beyond loopback.
        for (key, value) in environment {
            let (Some(key), Some(value)) = (key.as_str(), value.as_str()) else {
                continue;
            };
            if key.ends_with("_ADDR") {
                assert!(
                    value.starts_with("0.0.0.0:"),
                    "compose.yaml: {service} {key}={value} is unreachable from outside the container"
                );
            }
        }
    }
}

#[test]
fn the_configuration_reference_documents_every_variable() {
    let reference = std::fs::read_to_string(repo_root().join("docs/configuration.md")).unwrap();
    let mut missing = Vec::new();
    for (_, vars) in services() {
        for var in vars {
            if !reference.contains(&format!("`{var}`")) {
                missing.push(var);
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks {missing:?}"
    );
}
