//! Logging and tracing set-up: one call at the start of each binary.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global subscriber. Safe to call more than once (later calls are no-ops), which
/// the in-process test harness relies on.
pub fn init(service: &'static str, config: &TelemetryConfig) {
    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE)
        .with_target(true);
    let installed = match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    if installed.is_ok() {
        tracing::info!(service, "telemetry initialised");
    }
}
