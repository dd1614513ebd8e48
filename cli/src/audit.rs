//! `tally audit verify|digest|export`.
//!
//! `verify` reads PostgreSQL directly (an auditor's tool should not trust the services it
//! audits); `export` asks the query-service for one aggregate's history in NDJSON or CSV.

use std::io::Write;

use anyhow::{Context, bail};
use audit::digest::Digest;
use audit::verify::{VerifyOptions, VerifyReport};
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;

use crate::database::Database;
use crate::progress::events_bar;
use crate::read::Http;
use crate::send::Connection;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute every hash chain, re-derive every account with the domain's rules and compare
    /// it with the read model. Exit status 1 on any finding.
    Verify(VerifyArgs),
    /// Take a digest of the store now and print it as JSON (the command-service also publishes
    /// one to the audit stream periodically).
    Digest(DigestArgs),
    /// Write one aggregate's full history, with who/why and hashes, to stdout.
    Export(ExportArgs),
    /// Print a new ed25519 key pair for signing digests, as JSON: keep `secret_key` in a file
    /// for `TALLY_AUDIT_SIGNING_KEY_FILE`, give `public_key` to auditors.
    Keygen,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    database: Database,
    /// Verify only this aggregate.
    #[arg(long)]
    aggregate: Option<String>,
    #[arg(long = "aggregate-type", default_value = "account")]
    aggregate_type: String,
    /// Also prove that history up to this digest is unchanged: a digest JSON file, or the
    /// sequence number of a digest in the audit stream (`<PREFIX>_AUDIT`).
    #[arg(long)]
    digest: Option<String>,
    /// With `--digest`: require the digest to be signed by this ed25519 public key (hex).
    #[arg(long = "public-key", requires = "digest")]
    public_key: Option<String>,
    /// Findings printed at most (all are counted).
    #[arg(long = "findings-max", default_value_t = 100)]
    findings_max: usize,
}

#[derive(Debug, Args)]
pub struct DigestArgs {
    #[command(flatten)]
    database: Database,
    /// Sign the digest with the ed25519 secret key in this file.
    #[arg(long = "signing-key-file")]
    signing_key_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Ndjson,
    Csv,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The aggregate's id.
    id: String,
    #[arg(long = "aggregate-type", default_value = "account")]
    aggregate_type: String,
    #[arg(long, value_enum, default_value = "ndjson")]
    format: ExportFormat,
}

/// Ok(true): nothing found.
#[allow(clippy::print_stdout)]
pub async fn run(
    command: AuditCommand,
    nats: &Connection,
    http: &Http,
    json: bool,
) -> anyhow::Result<bool> {
    match command {
        AuditCommand::Verify(args) => verify(args, nats, json).await,
        AuditCommand::Digest(args) => {
            let key = args
                .signing_key_file
                .as_deref()
                .map(audit::digest_signing::load_signing_key)
                .transpose()?;
            let pool = args.database.pool().await?;
            let mut digest = audit::digest::take(&pool).await?;
            if let Some(key) = &key {
                audit::digest_signing::sign(&mut digest, key);
            }
            println!("{}", serde_json::to_string_pretty(&digest)?);
            Ok(true)
        }
        AuditCommand::Export(args) => export(args, http, nats).await,
        AuditCommand::Keygen => {
            let (secret_key, public_key) = audit::digest_signing::generate_key();
            println!(
                "{}",
                serde_json::json!({"algorithm": "ed25519", "secret_key": secret_key, "public_key": public_key})
            );
            Ok(true)
        }
    }
}

#[allow(clippy::print_stdout)]
async fn verify(args: VerifyArgs, nats: &Connection, json: bool) -> anyhow::Result<bool> {
    let digest = match &args.digest {
        Some(source) => Some(load_digest(source, nats).await?),
        None => None,
    };
    let pool = args.database.pool().await?;
    let aggregate = args
        .aggregate
        .clone()
        .map(|id| (args.aggregate_type.clone(), id));
    let total = event_store::audit::count_events(
        &pool,
        aggregate.as_ref().map(|(t, id)| (t.as_str(), id.as_str())),
    )
    .await?;
    let options = VerifyOptions {
        aggregate,
        as_of_tx: digest.as_ref().map(|d| d.as_of_tx),
        // Against a digest, history is checked as of then; today's read model is not.
        compare_read_model: digest.is_none(),
        findings_max: args.findings_max,
    };
    let bar = events_bar(u64::try_from(total).unwrap_or(0), "verify");
    let started = std::time::Instant::now();
    let mut report = audit::verify::verify(&pool, &options, |done| bar.set_position(done)).await?;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(digest) = &digest {
        for finding in audit::digest::compare(digest, &report, args.public_key.as_deref()) {
            report.findings_total += 1;
            report.findings.push(finding);
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "events": report.events,
                "aggregates": report.aggregates,
                "events_per_s": rate(report.events, elapsed),
                "read_models_compared": report.read_models_compared,
                "read_models_behind": report.read_models_behind,
                "findings_total": report.findings_total,
                "findings": report.findings,
                "currencies": report.currencies,
                "merkle_root": hex_root(&report),
            })
        );
    } else {
        print_report(&report, elapsed, digest.as_ref());
    }
    Ok(report.findings_total == 0)
}

fn rate(events: u64, elapsed_s: f64) -> u64 {
    if elapsed_s > 0.0 {
        (events as f64 / elapsed_s) as u64
    } else {
        0
    }
}

fn hex_root(report: &VerifyReport) -> String {
    report
        .merkle_root()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[allow(clippy::print_stdout)]
fn print_report(report: &VerifyReport, elapsed_s: f64, digest: Option<&Digest>) {
    for finding in &report.findings {
        println!("FINDING {finding}");
    }
    // Double entry: each currency's client and system balances, which must sum to zero.
    for books in &report.currencies {
        println!("books {books}");
    }
    if report.findings_total > report.findings.len() as u64 {
        println!(
            "… and {} more findings",
            report.findings_total - report.findings.len() as u64
        );
    }
    println!(
        "verified {} events of {} aggregates in {:.1}s ({} events/s); read model: {} compared, {} behind",
        report.events,
        report.aggregates,
        elapsed_s,
        rate(report.events, elapsed_s),
        report.read_models_compared,
        report.read_models_behind,
    );
    if let Some(digest) = digest {
        println!(
            "digest as of tx {} ({} events, {}): {}",
            digest.as_of_tx,
            digest.event_count,
            digest
                .signature
                .as_ref()
                .map_or("unsigned".to_owned(), |s| format!(
                    "signed by {}",
                    s.public_key
                )),
            if report.findings_total == 0 {
                "history unchanged"
            } else {
                "DOES NOT MATCH"
            }
        );
    }
    println!(
        "{}",
        if report.findings_total == 0 {
            "OK: no findings".to_owned()
        } else {
            format!("FAILED: {} finding(s)", report.findings_total)
        }
    );
}

/// A digest from a JSON file, or from the audit stream by sequence number.
async fn load_digest(source: &str, nats: &Connection) -> anyhow::Result<Digest> {
    if let Ok(sequence) = source.parse::<u64>() {
        let client = nats
            .options()?
            .connect(nats.urls.join(","))
            .await
            .context("cannot connect to NATS (--nats-url / TALLY_NATS_URL)")?;
        let subjects = platform::nats::Subjects::new(&nats.prefix)?;
        let stream_name = platform::nats::StreamNames::for_subjects(&subjects).audit;
        let stream = async_nats::jetstream::new(client)
            .get_stream(&stream_name)
            .await
            .with_context(|| format!("no stream {stream_name}"))?;
        let message = stream
            .get_raw_message(sequence)
            .await
            .with_context(|| format!("no digest at {stream_name} sequence {sequence}"))?;
        return serde_json::from_slice(&message.payload)
            .with_context(|| format!("{stream_name} sequence {sequence} is not a digest"));
    }
    let text = std::fs::read_to_string(source).with_context(|| format!("cannot read {source}"))?;
    serde_json::from_str(&text).with_context(|| format!("{source} is not a digest"))
}

async fn export(args: ExportArgs, http: &Http, nats: &Connection) -> anyhow::Result<bool> {
    let timeout_ms = nats.timeout_ms;
    let accept = match args.format {
        ExportFormat::Ndjson => "application/x-ndjson",
        ExportFormat::Csv => "text/csv",
    };
    let url = format!(
        "{}/v1/audit/{}/{}/events",
        http.base.trim_end_matches('/'),
        args.aggregate_type,
        args.id
    );
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_millis(timeout_ms))
        .build()?;
    let mut request = client.get(&url).header("Accept", accept);
    if let Some(value) = crate::send::authorization(nats.token.as_deref()) {
        request = request.header("Authorization", value);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the API at {}", http.base))?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        bail!("{status}: {body}");
    }
    let mut out = std::io::stdout().lock();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        out.write_all(&chunk.context("export interrupted")?)?;
    }
    out.flush()?;
    Ok(true)
}
