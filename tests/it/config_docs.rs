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

/// The four services and the environment variables each reads (from their clap definitions).
pub(crate) fn services() -> Vec<(&'static str, BTreeSet<String>)> {
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
    let known_by_service: std::collections::BTreeMap<_, _> = services().into_iter().collect();
    for service in known_by_service.keys() {
        assert!(
            compose["services"][*service].is_mapping(),
            "compose.yaml lacks service {service}"
        );
    }
    // Every compose service built from one of the four (the default stack and the `cluster`
    // profile's replicas, e.g. cluster-command-service) is checked.
    let mut checked = 0;
    for (name, definition) in compose["services"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        let Some(service) = definition["build"]["args"]["SERVICE"].as_str() else {
            continue;
        };
        let known = known_by_service
            .get(service)
            .unwrap_or_else(|| panic!("compose.yaml: {name} builds unknown service {service}"));
        check_compose_service(name, &definition["environment"], known);
        checked += 1;
    }
    assert!(
        checked >= 8,
        "compose.yaml: expected the four services and the cluster profile's four, found {checked}"
    );
}

fn check_compose_service(name: &str, environment: &serde_norway::Value, known: &BTreeSet<String>) {
    let environment = environment
        .as_mapping()
        .unwrap_or_else(|| panic!("compose.yaml: service {name} has no environment map"));
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
        "compose.yaml sets variables {name} does not read: {unknown:?}"
    );
    for needed in ["TALLY_DATABASE_URL", "TALLY_NATS_URL", "TALLY_LOG_FORMAT"] {
        assert!(set.contains(needed), "compose.yaml: {name} lacks {needed}");
    }
    // Inside a container the service must listen beyond loopback.
    for (key, value) in environment {
        let (Some(key), Some(value)) = (key.as_str(), value.as_str()) else {
            continue;
        };
        if key.ends_with("_ADDR") {
            assert!(
                value.starts_with("0.0.0.0:"),
                "compose.yaml: {name} {key}={value} is unreachable from outside the container"
            );
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
