//! The command-service's metrics: commands by type and outcome, their latency, optimistic-
//! concurrency retries and JetStream publish errors. (Outbox backlog and publish lag are read
//! from the database at scrape time, see `outbox_watch`.)

use std::time::Duration;

use domain::CommandReply;
use platform::metrics::{LATENCY_BUCKETS_S, MetricsError, counter_vec, histogram_vec};
use prometheus::{HistogramVec, IntCounter, IntCounterVec, Registry};

#[derive(Debug, Clone)]
pub struct CommandMetrics {
    commands: IntCounterVec,
    seconds: HistogramVec,
    pub conflict_retries: IntCounter,
    pub publish_errors: IntCounter,
    pub relay_delays: prometheus::Histogram,
    /// Requests dropped unexecuted because their reply subject is not an inbox.
    pub refused_reply_subjects: IntCounter,
}

impl CommandMetrics {
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        let retries = counter_vec(
            registry,
            "tally_command_conflict_retries_total",
            "Optimistic-concurrency conflicts retried.",
            &[],
        )?;
        let publish_errors = counter_vec(
            registry,
            "tally_relay_publish_errors_total",
            "Failed publications of events to JetStream (each is retried).",
            &[],
        )?;
        Ok(CommandMetrics {
            commands: counter_vec(
                registry,
                "tally_commands_total",
                "Commands answered, by aggregate, command and outcome (`accepted` or the error code).",
                &["aggregate", "command", "outcome"],
            )?,
            seconds: histogram_vec(
                registry,
                "tally_command_duration_seconds",
                "Time from receiving a command to its answer.",
                &["aggregate", "command"],
                &LATENCY_BUCKETS_S,
            )?,
            relay_delays: histogram_vec(
                registry,
                "tally_relay_event_delay_seconds",
                "Time from an event's recording in the event store to JetStream's acknowledgement of it.",
                &[],
                &LATENCY_BUCKETS_S,
            )?
            .with_label_values::<&str>(&[]),
            refused_reply_subjects: counter_vec(
                registry,
                "tally_command_reply_subjects_refused_total",
                "Requests dropped unexecuted because their reply subject is not an inbox (`_INBOX…`).",
                &[],
            )?
            .with_label_values::<&str>(&[]),
            conflict_retries: retries.with_label_values::<&str>(&[]),
            publish_errors: publish_errors.with_label_values::<&str>(&[]),
        })
    }

    /// Counts the answer to a command that came in on `subject` (`<prefix>.<kind>.…`).
    pub fn observe_subject(
        &self,
        subject: &str,
        prefix: &str,
        kind: &str,
        schemas: &crate::schema_check::SchemaRegistry,
        reply: &CommandReply,
        took: Duration,
    ) {
        let (aggregate, command) = crate::incoming::split_subject(subject, prefix, kind)
            .filter(|(a, c)| schemas.knows(a, c))
            .unwrap_or(("unknown", "unknown"));
        self.observe(aggregate, command, reply, took);
    }

    /// Counts one answered command. `aggregate` and `command` must be known names (callers
    /// pass `unknown` otherwise), so garbage subjects cannot grow the label set.
    pub fn observe(&self, aggregate: &str, command: &str, reply: &CommandReply, took: Duration) {
        let outcome = match reply {
            CommandReply::Accepted { .. } => "accepted",
            CommandReply::Rejected { error, .. } => error.code.as_str(),
        };
        self.commands
            .with_label_values(&[aggregate, command, outcome])
            .inc();
        self.seconds
            .with_label_values(&[aggregate, command])
            .observe(took.as_secs_f64());
    }
}

/// `tally_commands_in_flight`: places taken among `TALLY_COMMANDS_IN_FLIGHT_MAX`, read from the
/// semaphore at scrape time (a batch's commands hold one each).
pub struct InFlight {
    pub semaphore: std::sync::Arc<tokio::sync::Semaphore>,
    pub max: usize,
}

#[platform::ops_http::async_trait]
impl platform::ops_http::MetricsSource for InFlight {
    async fn render(&self) -> String {
        let taken = self.max.saturating_sub(self.semaphore.available_permits());
        format!(
            "# HELP tally_commands_in_flight Commands executing now (at most TALLY_COMMANDS_IN_FLIGHT_MAX).\n\
             # TYPE tally_commands_in_flight gauge\n\
             tally_commands_in_flight {taken}\n"
        )
    }
}
