//! Tally's integration tests: one binary (link time matters on 2 cores), one module per area.
//! Every test runs against the real nats-server and PostgreSQL started by the harness.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed expectation should panic

mod aggregate_cache;
mod audit;
mod batched_commits;
mod canonical_json;
mod cli;
mod commands;
mod config_docs;
mod console;
mod crash;
mod dead_letters;
mod deploy_manifests;
mod durable;
mod event_store;
mod examples;
mod failures;
mod feed;
mod harness;
mod hold_expiry;
mod ledger;
mod ledger_attacks;
mod ledger_reads;
mod multi_instance;
mod observability;
mod ops_api;
mod outbox;
mod partitions;
mod primary_failover;
mod projections;
mod read_api;
mod read_cache;
mod read_failures;
mod readiness;
mod rebuild;
mod rebuild_crash;
mod schemathesis;
mod security;
mod service_binaries;
mod snapshots;
mod startup;
mod transfers;
