//! An `events` row as the relay reads it, and the JetStream message it becomes: the subject,
//! the headers consumers filter and trace by, and the `Nats-Msg-Id` the stream deduplicates on.

use async_nats::HeaderMap;
use async_nats::jetstream;
use domain::envelope::{self, EventMessage};
use platform::nats::Subjects;

#[derive(Debug, sqlx::FromRow)]
pub(super) struct OutboxRow {
    pub(super) tx_id: String,
    pub(super) global_position: i64,
    pub(super) aggregate_type: String,
    pub(super) aggregate_id: String,
    pub(super) sequence: i64,
    pub(super) event_type: String,
    pub(super) event_version: String,
    pub(super) payload: serde_json::Value,
    pub(super) metadata: serde_json::Value,
    pub(super) recorded_at: chrono::DateTime<chrono::Utc>,
}

pub(super) fn message(
    subjects: &Subjects,
    row: &OutboxRow,
) -> (String, jetstream::message::PublishMessage) {
    let sequence = u64::try_from(row.sequence).unwrap_or_default();
    let body = EventMessage {
        aggregate_type: row.aggregate_type.clone(),
        aggregate_id: row.aggregate_id.clone(),
        sequence,
        event_type: row.event_type.clone(),
        event_version: row.event_version.clone(),
        global_position: row.global_position,
        recorded_at: row.recorded_at,
        payload: row.payload.clone(),
        metadata: row.metadata.clone(),
    };
    let mut headers = HeaderMap::new();
    headers.insert(envelope::headers::EVENT_TYPE, row.event_type.as_str());
    headers.insert(envelope::headers::EVENT_VERSION, row.event_version.as_str());
    headers.insert(
        envelope::headers::AGGREGATE_TYPE,
        row.aggregate_type.as_str(),
    );
    headers.insert(envelope::headers::AGGREGATE_ID, row.aggregate_id.as_str());
    headers.insert(envelope::headers::SEQUENCE, sequence.to_string().as_str());
    if let Some(command_id) = row.metadata.get("command_id").and_then(|v| v.as_str()) {
        headers.insert(envelope::headers::COMMAND_ID, command_id);
    }
    // The trace continues from the command to every consumer of its events.
    if let Some(traceparent) = row.metadata.get("traceparent").and_then(|v| v.as_str()) {
        headers.insert(envelope::headers::TRACEPARENT, traceparent);
    }
    let publish = jetstream::message::PublishMessage::build()
        .headers(headers)
        .message_id(envelope::event_message_id(
            &row.aggregate_type,
            &row.aggregate_id,
            sequence,
        ))
        .payload(serde_json::to_vec(&body).unwrap_or_default().into());
    (
        subjects.event(&row.aggregate_type, &row.aggregate_id),
        publish,
    )
}
