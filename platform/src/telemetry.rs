//! Logging and tracing set-up: one call at the start of each binary.
//!
//! Logs go to stderr, `pretty` or `json`. When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are
//! also exported with OpenTelemetry (OTLP over HTTP), and a span that has a W3C `traceparent`
//! (a command's, an event's, an HTTP request's) continues that trace: see [`continue_trace`].

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetryConfig};

/// Which spans are exported over OTLP.
const EXPORTED_SPANS: &str =
    "info,command_service=debug,projections=debug,process_manager=debug,query_service=debug";

/// The exporter's provider, kept to flush it at exit.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber. Safe to call more than once (later calls are no-ops), which
/// the in-process test harness relies on.
pub fn init(service: &'static str, config: &TelemetryConfig) {
    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_span_events(FmtSpan::NONE)
            .with_target(true)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_span_events(FmtSpan::NONE)
            .with_target(true)
            .boxed(),
    };
    // Exported spans are chosen apart from logs: every hop's span (some are debug, one per
    // event), whatever the log level.
    let otel = otlp_tracer(service).map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(EnvFilter::new(EXPORTED_SPANS))
    });
    let exporting = otel.is_some();
    let installed = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(otel)
        .try_init();
    if installed.is_ok() {
        tracing::info!(service, otlp = exporting, "telemetry initialised");
    }
}

/// An OTLP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the exporter reads it, and the
/// other standard `OTEL_*` variables, itself).
fn otlp_tracer(service: &'static str) -> Option<opentelemetry_sdk::trace::Tracer> {
    std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT")?;
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("OTLP export disabled: {error}");
            return None;
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let tracer = provider.tracer(service);
    let _ = PROVIDER.set(provider);
    Some(tracer)
}

/// Makes `span` a child of the remote span a W3C `traceparent` names, so exported traces
/// run from the client's request through every hop. Without an exporter this does nothing
/// (the `trace_id` field on each hop's span still ties the logs together).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier =
        std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&carrier));
    let _ = span.set_parent(parent);
}

/// Flushes exported spans; call before the process exits.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(error) = provider.shutdown()
    {
        eprintln!("OTLP flush failed: {error}");
    }
}
