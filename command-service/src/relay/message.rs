//! A stored event as the relay reads it (`event_store::RawEvent`), and the JetStream message it
//! becomes: the subject, the headers consumers filter and trace by, and the `Nats-Msg-Id` the
//! stream deduplicates on.
//!
//! The payload and metadata pass through as the JSON text PostgreSQL sends: the relay never
//! builds them into trees. Parsing each into a `serde_json::Value`, cloning it into an
//! `EventMessage` and serialising that again was most of the relay's CPU, and the relay runs
//! for every event.

use async_nats::HeaderMap;
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use domain::envelope;
use event_store::RawEvent;
use platform::nats::Subjects;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The metadata fields the relay itself reads (headers and its trace span).
#[derive(Debug, Default, Deserialize)]
pub(super) struct RelayedMetadata {
    pub(super) command_id: Option<String>,
    pub(super) trace_id: Option<String>,
    pub(super) traceparent: Option<String>,
}

/// Metadata that is not an object of the expected shape only loses its headers: the event is
/// published all the same, its body as stored.
pub(super) fn relayed_metadata(row: &RawEvent) -> RelayedMetadata {
    let text = row.metadata.get();
    // A derived struct also reads a JSON array, by position: only an object names fields.
    if !text.trim_start().starts_with('{') {
        return RelayedMetadata::default();
    }
    serde_json::from_str(text).unwrap_or_default()
}

/// `domain::envelope::EventMessage` on the wire, borrowed from the row. Same field names, so
/// consumers read it as an `EventMessage` (a test below holds the two together).
#[derive(Serialize)]
struct EventBody<'a> {
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    sequence: u64,
    event_type: &'a str,
    event_version: &'a str,
    global_position: i64,
    recorded_at: DateTime<Utc>,
    payload: &'a RawValue,
    metadata: &'a RawValue,
}

fn body(row: &RawEvent, sequence: u64) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&EventBody {
        aggregate_type: &row.aggregate_type,
        aggregate_id: &row.aggregate_id,
        sequence,
        event_type: &row.event_type,
        event_version: &row.event_version,
        global_position: row.global_position,
        recorded_at: row.recorded_at,
        payload: &row.payload,
        metadata: &row.metadata,
    })
}

/// The subject and message of `row`. Fails only on a row that breaks the table's invariants
/// (a negative sequence) or a body that cannot be written (never, for valid JSON text).
pub(super) fn message(
    subjects: &Subjects,
    row: &RawEvent,
    metadata: &RelayedMetadata,
) -> Result<(String, jetstream::message::PublishMessage), super::RelayError> {
    let sequence = row.sequence_u64()?;
    let mut headers = HeaderMap::new();
    headers.insert(envelope::headers::EVENT_TYPE, row.event_type.as_str());
    headers.insert(envelope::headers::EVENT_VERSION, row.event_version.as_str());
    headers.insert(
        envelope::headers::AGGREGATE_TYPE,
        row.aggregate_type.as_str(),
    );
    headers.insert(envelope::headers::AGGREGATE_ID, row.aggregate_id.as_str());
    headers.insert(envelope::headers::SEQUENCE, sequence.to_string().as_str());
    if let Some(command_id) = &metadata.command_id {
        headers.insert(envelope::headers::COMMAND_ID, command_id.as_str());
    }
    // The trace continues from the command to every consumer of its events.
    if let Some(traceparent) = &metadata.traceparent {
        headers.insert(envelope::headers::TRACEPARENT, traceparent.as_str());
    }
    let publish = jetstream::message::PublishMessage::build()
        .headers(headers)
        .message_id(envelope::event_message_id(
            &row.aggregate_type,
            &row.aggregate_id,
            sequence,
        ))
        .payload(body(row, sequence).map_err(super::RelayError::Body)?.into());
    Ok((
        subjects.event(&row.aggregate_type, &row.aggregate_id),
        publish,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use domain::envelope::EventMessage;
    use serde_json::json;

    use super::*;

    fn raw(value: &serde_json::Value) -> sqlx::types::Json<Box<RawValue>> {
        // Whitespace the compact form lacks, as jsonb text has: the body must carry it as is.
        sqlx::types::Json(
            RawValue::from_string(serde_json::to_string_pretty(value).unwrap()).unwrap(),
        )
    }

    fn row(metadata: &serde_json::Value) -> RawEvent {
        RawEvent {
            tx_id: 42,
            global_position: 7,
            aggregate_type: "account".into(),
            aggregate_id: "a-1".into(),
            sequence: 3,
            event_type: "MoneyDeposited".into(),
            event_version: "1.0".into(),
            payload: raw(
                &json!({"MoneyDeposited": {"amount": 5, "reference": "r \"q\"", "balance_after": 15}}),
            ),
            metadata: raw(metadata),
            hash: None,
            recorded_at: DateTime::from_timestamp(1_700_000_000, 123_000).unwrap(),
        }
    }

    #[test]
    fn the_body_reads_back_as_the_event_message_consumers_expect() {
        let metadata = json!({"command_id": "c-1", "trace_id": "t", "traceparent": "00-ab-cd-01", "actor": "x"});
        let row = row(&metadata);
        let read: EventMessage = serde_json::from_slice(&body(&row, 3).unwrap()).unwrap();
        assert_eq!(
            read,
            EventMessage {
                aggregate_type: "account".into(),
                aggregate_id: "a-1".into(),
                sequence: 3,
                event_type: "MoneyDeposited".into(),
                event_version: "1.0".into(),
                global_position: 7,
                recorded_at: row.recorded_at,
                payload: json!({"MoneyDeposited": {"amount": 5, "reference": "r \"q\"", "balance_after": 15}}),
                metadata,
            }
        );
    }

    #[test]
    fn headers_come_from_the_metadata_and_survive_odd_metadata() {
        let row = row(&json!({"command_id": "c-1", "traceparent": "00-ab-cd-01"}));
        let metadata = relayed_metadata(&row);
        assert_eq!(metadata.command_id.as_deref(), Some("c-1"));
        assert_eq!(metadata.traceparent.as_deref(), Some("00-ab-cd-01"));
        assert_eq!(metadata.trace_id, None);

        let odd = RawEvent {
            metadata: raw(&json!(["not", "an", "object"])),
            ..row
        };
        let metadata = relayed_metadata(&odd);
        assert!(metadata.command_id.is_none() && metadata.traceparent.is_none());
        let read: EventMessage = serde_json::from_slice(&body(&odd, 3).unwrap()).unwrap();
        assert_eq!(read.metadata, json!(["not", "an", "object"]));
    }
}
