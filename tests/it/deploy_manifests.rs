//! deploy/kubernetes/ stays true to the services: every TALLY_ variable a manifest gives a
//! service is one it reads, its probes ask the port its ops address listens on, and it runs
//! at least two replicas with a disruption budget.

use std::collections::{BTreeMap, BTreeSet};

use clap::CommandFactory;
use serde::Deserialize;
use serde_norway::Value;
use tests::binaries::repo_root;

use crate::config_docs::services;

/// Every document of every manifest under deploy/kubernetes/.
fn manifests() -> Vec<(String, Value)> {
    let dir = repo_root().join("deploy/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    let mut documents = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for document in serde_norway::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("deploy/kubernetes/{name} is not valid YAML: {e}"));
            if !value.is_null() {
                documents.push((name.clone(), value));
            }
        }
    }
    documents
}

fn kind_named<'a>(documents: &'a [(String, Value)], kind: &str, name: &str) -> Option<&'a Value> {
    documents.iter().map(|(_, doc)| doc).find(|doc| {
        doc["kind"].as_str() == Some(kind) && doc["metadata"]["name"].as_str() == Some(name)
    })
}

/// The keys of a ConfigMap's `data` or a Secret's `data`/`stringData`.
fn keys_of(document: &Value) -> BTreeSet<String> {
    ["data", "stringData"]
        .iter()
        .filter_map(|field| document[*field].as_mapping())
        .flat_map(|map| map.keys().filter_map(|k| k.as_str().map(str::to_owned)))
        .collect()
}

/// The variable naming each service's ops address (the query-service serves /readyz on its
/// HTTP address).
fn ops_address_variable(service: &str) -> &'static str {
    match service {
        "command-service" => "TALLY_COMMAND_OPS_ADDR",
        "projections" => "TALLY_PROJECTIONS_OPS_ADDR",
        "process-manager" => "TALLY_PROCESS_MANAGER_OPS_ADDR",
        "query-service" => "TALLY_HTTP_ADDR",
        other => panic!("unknown service {other}"),
    }
}

fn command_of(service: &str) -> clap::Command {
    match service {
        "command-service" => command_service::Config::command(),
        "projections" => projections::Config::command(),
        "process-manager" => process_manager::Config::command(),
        "query-service" => query_service::Config::command(),
        other => panic!("unknown service {other}"),
    }
}

/// The default of the setting read from `variable`, as clap has it.
fn default_of(service: &str, variable: &str) -> Option<String> {
    command_of(service)
        .get_arguments()
        .find(|arg| arg.get_env().is_some_and(|env| env == variable))
        .and_then(|arg| arg.get_default_values().first().cloned())
        .map(|value| value.to_string_lossy().into_owned())
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("address {address} has no port"))
}

/// A probe's port: a number, or the name of one of the container's ports.
fn probe_port(container: &Value, probe: &Value) -> u16 {
    let port = &probe["httpGet"]["port"];
    if let Some(number) = port.as_u64() {
        return u16::try_from(number).unwrap();
    }
    let name = port
        .as_str()
        .unwrap_or_else(|| panic!("probe without an httpGet port: {probe:?}"));
    container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .map(|n| u16::try_from(n).unwrap())
        .unwrap_or_else(|| panic!("probe port {name} is not a port of the container"))
}

#[test]
fn kubernetes_manifests_match_the_services() {
    let documents = manifests();
    let known: BTreeMap<_, _> = services().into_iter().collect();
    let deployments: Vec<_> = documents
        .iter()
        .filter(|(_, doc)| doc["kind"].as_str() == Some("Deployment"))
        .collect();
    let mut seen = BTreeSet::new();
    for (file, deployment) in &deployments {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
        assert!(
            replicas >= 2,
            "{file}: Deployment {name} runs {replicas} replica(s); at least 2 survive a pod's loss"
        );
        let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
        let budget = documents.iter().map(|(_, doc)| doc).find(|doc| {
            doc["kind"].as_str() == Some("PodDisruptionBudget")
                && doc["spec"]["selector"]["matchLabels"]
                    .as_mapping()
                    .is_some_and(|labels| {
                        labels
                            .iter()
                            .all(|(k, v)| pod_labels[k.as_str().unwrap()] == *v)
                    })
        });
        assert!(
            budget.is_some(),
            "{file}: no PodDisruptionBudget selects Deployment {name}'s pods"
        );

        for container in deployment["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap()
        {
            let service = container["name"].as_str().unwrap();
            let reads = known.get(service).unwrap_or_else(|| {
                panic!("{file}: container {service} is not one of the services {known:?}")
            });
            seen.insert(service.to_owned());

            // What the container's environment holds: envFrom's ConfigMaps and Secrets (the
            // manifests must define them) and env's own entries.
            let mut set: BTreeMap<String, Option<String>> = BTreeMap::new();
            for source in container["envFrom"].as_sequence().into_iter().flatten() {
                let (kind, reference) = if source["configMapRef"].is_mapping() {
                    ("ConfigMap", &source["configMapRef"])
                } else {
                    ("Secret", &source["secretRef"])
                };
                let referenced = reference["name"].as_str().unwrap();
                let document = kind_named(&documents, kind, referenced).unwrap_or_else(|| {
                    panic!("{file}: {service} reads {kind} {referenced}, which no manifest defines")
                });
                for key in keys_of(document) {
                    let value = document["data"][key.as_str()].as_str().map(str::to_owned);
                    set.insert(key, value);
                }
            }
            for entry in container["env"].as_sequence().into_iter().flatten() {
                set.insert(
                    entry["name"].as_str().unwrap().to_owned(),
                    entry["value"].as_str().map(str::to_owned),
                );
            }
            let unknown: Vec<_> = set
                .keys()
                .filter(|k| k.starts_with("TALLY_") && !reads.contains(*k))
                .collect();
            assert!(
                unknown.is_empty(),
                "{file}: {service} is given variables it does not read: {unknown:?}"
            );
            for needed in ["TALLY_DATABASE_URL", "TALLY_NATS_URL", "TALLY_NATS_USER"] {
                assert!(set.contains_key(needed), "{file}: {service} lacks {needed}");
            }
            assert_eq!(
                set.get("TALLY_STREAM_REPLICAS")
                    .cloned()
                    .flatten()
                    .as_deref(),
                Some("3"),
                "{file}: {service} must keep its streams on the three NATS nodes"
            );

            // The probes ask the port the service's ops address listens on.
            let variable = ops_address_variable(service);
            let address = set
                .get(variable)
                .cloned()
                .flatten()
                .or_else(|| default_of(service, variable))
                .unwrap_or_else(|| panic!("{service}: no value or default for {variable}"));
            assert!(
                !address.starts_with("127.") && !address.starts_with("localhost"),
                "{file}: {service} {variable}={address} listens on loopback: probes cannot reach it"
            );
            for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
                let probe_value = &container[probe];
                assert!(probe_value.is_mapping(), "{file}: {service} has no {probe}");
                assert_eq!(
                    probe_value["httpGet"]["path"].as_str(),
                    Some(path),
                    "{file}: {service} {probe} path"
                );
                assert_eq!(
                    probe_port(container, probe_value),
                    port_of(&address),
                    "{file}: {service} {probe} asks another port than {variable}={address}"
                );
            }
        }
    }
    let all: BTreeSet<String> = known.keys().map(|s| (*s).to_owned()).collect();
    assert_eq!(seen, all, "deploy/kubernetes/ must deploy each service");
}
