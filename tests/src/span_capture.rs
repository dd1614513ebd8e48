//! Spans captured in-process: every span with a non-empty `trace_id` field is recorded (name,
//! target, trace id), so a test can follow one trace across the services it runs.

use std::sync::Mutex;

use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// Most spans kept (tests that send no `traceparent` record none).
const CAPTURED_MAX: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedSpan {
    pub name: String,
    pub target: String,
    pub trace_id: String,
}

static CAPTURED: Mutex<Vec<CapturedSpan>> = Mutex::new(Vec::new());

/// The spans recorded so far for `trace_id`.
pub fn spans_of(trace_id: &str) -> Vec<CapturedSpan> {
    CAPTURED
        .lock()
        .map(|spans| {
            spans
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, Default)]
pub struct CaptureLayer;

struct TraceIdVisitor(Option<String>);

impl Visit for TraceIdVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "trace_id" && !value.is_empty() {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "trace_id" {
            let text = format!("{value:?}").trim_matches('"').to_owned();
            if !text.is_empty() {
                self.0 = Some(text);
            }
        }
    }
}

impl<S: Subscriber> Layer<S> for CaptureLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        let mut visitor = TraceIdVisitor(None);
        attrs.record(&mut visitor);
        let Some(trace_id) = visitor.0 else {
            return;
        };
        if let Ok(mut spans) = CAPTURED.lock()
            && spans.len() < CAPTURED_MAX
        {
            spans.push(CapturedSpan {
                name: attrs.metadata().name().to_owned(),
                target: attrs.metadata().target().to_owned(),
                trace_id,
            });
        }
    }
}
