//! Who, why and when: the metadata every event carries (its keys are fixed here; docs/subjects.md, "Events").
//!
//! cqrs-es stores metadata as `HashMap<String, String>` and copies one map onto every event of a
//! command; this type is the typed view of that map, with the keys fixed here.

use std::collections::HashMap;

use chrono::{DateTime, SubsecRound, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the metadata layout below; bumped when a key changes meaning.
pub const METADATA_SCHEMA_VERSION: u32 = 1;

pub const KEY_COMMAND_ID: &str = "command_id";
pub const KEY_CORRELATION_ID: &str = "correlation_id";
pub const KEY_CAUSATION_ID: &str = "causation_id";
pub const KEY_ACTOR: &str = "actor";
pub const KEY_RECORDED_AT: &str = "recorded_at";
pub const KEY_TRACE_ID: &str = "trace_id";
pub const KEY_TRACEPARENT: &str = "traceparent";
pub const KEY_SCHEMA_VERSION: &str = "schema_version";

/// The actor recorded when a command carries no credentials.
pub const ANONYMOUS_ACTOR: &str = "anonymous";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EventMetadata {
    /// The command that produced the event (its idempotency key).
    pub command_id: Uuid,
    /// The business flow the event belongs to (a transfer id, or the command id itself).
    pub correlation_id: Uuid,
    /// What directly caused the command: the command itself, or the event a process manager
    /// reacted to.
    pub causation_id: Uuid,
    /// Who sent the command (token subject, or `anonymous`).
    pub actor: String,
    /// When the service accepted the command, UTC.
    pub recorded_at: DateTime<Utc>,
    /// W3C trace id of the request, when one was propagated.
    pub trace_id: Option<String>,
    /// The full W3C `traceparent` of the request, so consumers of the event continue the trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub schema_version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata key `{0}` is missing")]
    Missing(&'static str),
    #[error("metadata key `{key}` has an invalid value `{value}`")]
    Invalid { key: &'static str, value: String },
}

impl EventMetadata {
    /// Metadata for a command sent directly by a client: it is its own correlation and cause.
    /// `recorded_at` is kept to the microsecond, the precision it is stored with.
    pub fn for_command(
        command_id: Uuid,
        actor: impl Into<String>,
        recorded_at: DateTime<Utc>,
    ) -> Self {
        EventMetadata {
            command_id,
            correlation_id: command_id,
            causation_id: command_id,
            actor: actor.into(),
            recorded_at: recorded_at.trunc_subsecs(6),
            trace_id: None,
            traceparent: None,
            schema_version: METADATA_SCHEMA_VERSION,
        }
    }

    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::with_capacity(7);
        map.insert(KEY_COMMAND_ID.into(), self.command_id.to_string());
        map.insert(KEY_CORRELATION_ID.into(), self.correlation_id.to_string());
        map.insert(KEY_CAUSATION_ID.into(), self.causation_id.to_string());
        map.insert(KEY_ACTOR.into(), self.actor.clone());
        map.insert(
            KEY_RECORDED_AT.into(),
            self.recorded_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        );
        if let Some(trace_id) = &self.trace_id {
            map.insert(KEY_TRACE_ID.into(), trace_id.clone());
        }
        if let Some(traceparent) = &self.traceparent {
            map.insert(KEY_TRACEPARENT.into(), traceparent.clone());
        }
        map.insert(KEY_SCHEMA_VERSION.into(), self.schema_version.to_string());
        map
    }

    pub fn from_map(map: &HashMap<String, String>) -> Result<Self, MetadataError> {
        fn get<'a>(
            map: &'a HashMap<String, String>,
            key: &'static str,
        ) -> Result<&'a str, MetadataError> {
            map.get(key)
                .map(String::as_str)
                .ok_or(MetadataError::Missing(key))
        }
        fn uuid(map: &HashMap<String, String>, key: &'static str) -> Result<Uuid, MetadataError> {
            let raw = get(map, key)?;
            Uuid::parse_str(raw).map_err(|_| MetadataError::Invalid {
                key,
                value: raw.to_owned(),
            })
        }
        let recorded_raw = get(map, KEY_RECORDED_AT)?;
        let recorded_at = DateTime::parse_from_rfc3339(recorded_raw)
            .map_err(|_| MetadataError::Invalid {
                key: KEY_RECORDED_AT,
                value: recorded_raw.to_owned(),
            })?
            .with_timezone(&Utc);
        let version_raw = get(map, KEY_SCHEMA_VERSION)?;
        let schema_version = version_raw.parse().map_err(|_| MetadataError::Invalid {
            key: KEY_SCHEMA_VERSION,
            value: version_raw.to_owned(),
        })?;
        Ok(EventMetadata {
            command_id: uuid(map, KEY_COMMAND_ID)?,
            correlation_id: uuid(map, KEY_CORRELATION_ID)?,
            causation_id: uuid(map, KEY_CAUSATION_ID)?,
            actor: get(map, KEY_ACTOR)?.to_owned(),
            recorded_at,
            trace_id: map.get(KEY_TRACE_ID).cloned(),
            traceparent: map.get(KEY_TRACEPARENT).cloned(),
            schema_version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn sample() -> EventMetadata {
        let at = Utc
            .with_ymd_and_hms(2026, 11, 24, 12, 0, 0)
            .single()
            .unwrap_or_default();
        let mut m = EventMetadata::for_command(Uuid::from_u128(7), "alice", at);
        m.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
        m.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        m.causation_id = Uuid::from_u128(9);
        m
    }

    #[test]
    fn map_round_trip_keeps_everything() {
        let m = sample();
        assert_eq!(EventMetadata::from_map(&m.to_map()), Ok(m));
    }

    #[test]
    fn missing_and_invalid_keys_are_named() {
        let mut map = sample().to_map();
        map.remove(KEY_ACTOR);
        assert_eq!(
            EventMetadata::from_map(&map),
            Err(MetadataError::Missing(KEY_ACTOR))
        );
        let mut map = sample().to_map();
        map.insert(KEY_COMMAND_ID.into(), "nope".into());
        assert!(matches!(
            EventMetadata::from_map(&map),
            Err(MetadataError::Invalid {
                key: KEY_COMMAND_ID,
                ..
            })
        ));
    }

    #[test]
    fn now_survives_the_round_trip() {
        let m = EventMetadata::for_command(Uuid::from_u128(1), "bob", Utc::now());
        assert_eq!(EventMetadata::from_map(&m.to_map()), Ok(m));
    }

    #[test]
    fn direct_commands_correlate_to_themselves() {
        let m = EventMetadata::for_command(Uuid::from_u128(1), "bob", Utc::now());
        assert_eq!(m.correlation_id, m.command_id);
        assert_eq!(m.causation_id, m.command_id);
    }
}
