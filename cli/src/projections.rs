//! `tally projections status|rebuild`.

use clap::{Args, Subcommand};

use crate::database::Database;
use crate::progress::events_bar;
use crate::send::Connection;

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Each projection's stream position, how far behind the events stream it is, and its
    /// dead letters.
    Status(StatusArgs),
    /// Rebuild a projection from the event store into shadow tables, catch up with live, then
    /// swap atomically. The read API keeps answering throughout.
    Rebuild(RebuildArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    database: Database,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    database: Database,
    /// The projection to rebuild (`accounts` or `transfers`).
    name: String,
}

#[derive(Debug, serde::Serialize)]
struct Status {
    projection: String,
    stream_sequence: i64,
    stream_head: i64,
    lag: i64,
    events_applied: i64,
    parked_aggregates: i64,
    updated_at: chrono::DateTime<chrono::Utc>,
}

#[allow(clippy::print_stdout)]
pub async fn run(
    command: ProjectionsCommand,
    nats: &Connection,
    json: bool,
) -> anyhow::Result<bool> {
    match command {
        ProjectionsCommand::Status(args) => {
            let pool = args.database.pool().await?;
            let subjects = platform::nats::Subjects::new(&nats.prefix)?;
            let events_stream = platform::nats::StreamNames::for_subjects(&subjects).events;
            // The relay's checkpoint is the events stream's head as far as Tally published it.
            let head = event_store::outbox::relayed_to(&pool, &events_stream).await?;
            let checkpoints: Vec<(String, i64, i64, i64, chrono::DateTime<chrono::Utc>)> =
                sqlx::query_as(
                    // The view sums the partitions' checkpoints (migration 0009).
                    "SELECT p.projection, p.stream_sequence, p.events_applied,
                        (SELECT count(*) FROM projection_parked k WHERE k.projection = p.projection),
                        p.updated_at
                 FROM projection_checkpoints p
                 ORDER BY p.projection",
                )
                .fetch_all(&pool)
                .await?;
            let rows = checkpoints
                .into_iter()
                .map(
                    |(projection, stream_sequence, events_applied, parked, updated_at)| Status {
                        projection,
                        stream_sequence,
                        stream_head: head,
                        lag: (head - stream_sequence).max(0),
                        events_applied,
                        parked_aggregates: parked,
                        updated_at,
                    },
                )
                .collect();
            let rows = with_consumer_lag(rows, nats, &events_stream).await;
            if json {
                println!("{}", serde_json::to_string(&rows)?);
            } else if rows.is_empty() {
                println!("no projection has applied an event yet");
            } else {
                println!(
                    "{:<12} {:>10} {:>10} {:>8} {:>12} {:>7}  updated",
                    "projection", "position", "head", "lag", "applied", "parked"
                );
                for r in rows {
                    println!(
                        "{:<12} {:>10} {:>10} {:>8} {:>12} {:>7}  {}",
                        r.projection,
                        r.stream_sequence,
                        r.stream_head,
                        r.lag,
                        r.events_applied,
                        r.parked_aggregates,
                        r.updated_at.to_rfc3339()
                    );
                }
            }
            Ok(true)
        }
        ProjectionsCommand::Rebuild(args) => {
            let pool = args.database.pool().await?;
            let conn = args.database.connection().await?;
            let bar = events_bar(0, "copy");
            let report = projections::rebuild::rebuild(&pool, conn, &args.name, |p| {
                use projections::rebuild::Phase;
                bar.set_message(match p.phase {
                    Phase::Copy => "copy",
                    Phase::CatchUp => "catch up",
                    Phase::Swap => "swap",
                });
                bar.set_length(p.events_total.max(p.events_done));
                bar.set_position(p.events_done);
            })
            .await?;
            bar.finish_and_clear();
            let rate = if report.elapsed_s > 0.0 {
                (report.events as f64 / report.elapsed_s) as u64
            } else {
                0
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "projection": args.name,
                        "events": report.events,
                        "elapsed_s": report.elapsed_s,
                        "events_per_s": rate,
                        "catch_up_passes": report.catch_up_passes,
                        "swap_ms": report.swap_ms,
                    })
                );
            } else {
                println!(
                    "rebuilt {} from {} events in {:.1}s ({rate} events/s, {} catch-up pass(es)); swapped in {} ms",
                    args.name,
                    report.events,
                    report.elapsed_s,
                    report.catch_up_passes,
                    report.swap_ms
                );
            }
            Ok(true)
        }
    }
}

/// Replaces each row's lag with its durable consumer's count of undelivered and unacked events:
/// a projection reads only its own aggregate type's subjects, so "head minus position" would
/// count other projections' events. Keeps the position-based figure when NATS is unreachable.
async fn with_consumer_lag(mut rows: Vec<Status>, nats: &Connection, stream: &str) -> Vec<Status> {
    let client = match nats.options() {
        Ok(options) => options.connect(nats.urls.as_slice()).await.ok(),
        Err(_) => None,
    };
    let Some(client) = client else {
        eprintln!("NATS unreachable: lag is the distance to the stream head, all subjects");
        return rows;
    };
    let Ok(mut stream) = async_nats::jetstream::new(client).get_stream(stream).await else {
        return rows;
    };
    // One consumer per partition of the events stream: the lag is their sum.
    let partitions = match stream.info().await {
        Ok(info) => platform::nats::event_partitions_of(&info.config).unwrap_or(1),
        Err(_) => return rows,
    };
    for row in &mut rows {
        let Some(projection) = projections::Projection::by_name(&row.projection) else {
            continue;
        };
        if let Some(behind) =
            projections::lag::consumers_behind(&mut stream, projection, partitions).await
        {
            row.lag = i64::try_from(behind).unwrap_or(i64::MAX);
        }
    }
    rows
}
