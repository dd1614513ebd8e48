//! `/v1/audit/...`: an aggregate's full stored history with who/why and chain hashes (JSON
//! pages, or whole as NDJSON or CSV), and its state at any version or instant, folded from the
//! event store with the domain's own `apply` (never from the read models).

use audit::history;
use audit::{StoredEvent, StoredEventExt};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::accounts::Page;
use crate::pagination;
use crate::problem::{ApiError, Problem};

const NDJSON: &str = "application/x-ndjson";
const CSV: &str = "text/csv";

/// One stored event with its metadata spelled out.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    /// The version the payload was written with (shown as stored, not upcast).
    pub event_version: String,
    /// Insertion order across all aggregates.
    pub global_position: i64,
    /// When the command was accepted (from the metadata, covered by the hash).
    pub recorded_at: DateTime<Utc>,
    pub actor: Option<String>,
    pub command_id: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub trace_id: Option<String>,
    /// Hex SHA-256 chain hash; absent for rows written before the chain existed.
    pub hash: Option<String>,
    /// The payload as stored.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// The metadata as stored (covered by the hash, so exports can be re-verified).
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
}

impl From<StoredEvent> for AuditEvent {
    fn from(e: StoredEvent) -> Self {
        use domain::metadata as m;
        let meta = |k: &str| e.meta(k).map(str::to_owned);
        AuditEvent {
            recorded_at: e.occurred_at(),
            actor: meta(m::KEY_ACTOR),
            command_id: meta(m::KEY_COMMAND_ID),
            correlation_id: meta(m::KEY_CORRELATION_ID),
            causation_id: meta(m::KEY_CAUSATION_ID),
            trace_id: meta(m::KEY_TRACE_ID),
            hash: e.hash_hex(),
            aggregate_type: e.aggregate_type,
            aggregate_id: e.aggregate_id,
            sequence: e.sequence,
            event_type: e.event_type,
            event_version: e.event_version,
            global_position: e.global_position,
            payload: e.payload.0,
            metadata: e.metadata.0,
        }
    }
}

const CSV_HEADER: [&str; 14] = [
    "aggregate_type",
    "aggregate_id",
    "sequence",
    "event_type",
    "event_version",
    "global_position",
    "recorded_at",
    "actor",
    "command_id",
    "correlation_id",
    "causation_id",
    "trace_id",
    "hash",
    "payload",
];

impl AuditEvent {
    fn csv_record(&self) -> [String; 14] {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        [
            self.aggregate_type.clone(),
            self.aggregate_id.clone(),
            self.sequence.to_string(),
            self.event_type.clone(),
            self.event_version.clone(),
            self.global_position.to_string(),
            self.recorded_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            opt(&self.actor),
            opt(&self.command_id),
            opt(&self.correlation_id),
            opt(&self.causation_id),
            opt(&self.trace_id),
            opt(&self.hash),
            self.payload.to_string(),
        ]
    }
}

/// One CSV record. Writing to a Vec does not fail; if it ever did, the export stops with the
/// error (the client sees a broken download) rather than leave a line out of an audit trail.
fn csv_line<I: IntoIterator<Item = S>, S: AsRef<[u8]>>(fields: I) -> std::io::Result<Bytes> {
    let mut writer = csv::Writer::from_writer(Vec::with_capacity(256));
    writer.write_record(fields).map_err(std::io::Error::other)?;
    let line = writer.into_inner().map_err(|e| e.into_error())?;
    Ok(Bytes::from(line))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Page size, 1 to 500 (default 50). JSON only: exports are whole.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// An aggregate's stored events, oldest first, with who/why and hashes.
///
/// `Accept: application/x-ndjson` or `text/csv` returns the whole history in that format,
/// streamed; otherwise a JSON page.
#[utoipa::path(
    get,
    path = "/v1/audit/{aggregate_type}/{aggregate_id}/events",
    tag = "audit",
    params(("aggregate_type" = String, Path, description = "e.g. `account`"), ("aggregate_id" = String, Path), EventsQuery),
    responses(
        (status = 200, description = "A JSON page, or the whole history as NDJSON or CSV", content(
            (Page<AuditEvent> = "application/json"),
            (String = "application/x-ndjson"),
            (String = "text/csv"),
        )),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn events(
    State(pool): State<PgPool>,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let export = if accept.contains(NDJSON) {
        Some(NDJSON)
    } else if accept.contains(CSV) {
        Some(CSV)
    } else {
        None
    };
    let not_found = || ApiError::NotFound {
        what: format!("{aggregate_type} {aggregate_id}"),
    };
    if let Some(content_type) = export {
        // Checked before streaming starts, so an unknown aggregate is a 404, not an empty body.
        if event_store::audit::events_page(&pool, &aggregate_type, &aggregate_id, 0, 1)
            .await?
            .is_empty()
        {
            return Err(not_found());
        }
        let csv = content_type == CSV;
        let header_line = csv.then(|| csv_line(CSV_HEADER));
        let lines = history::events_stream(pool, aggregate_type, aggregate_id).map(move |row| {
            let event = AuditEvent::from(row.map_err(std::io::Error::other)?);
            if csv {
                csv_line(event.csv_record())
            } else {
                let mut line = serde_json::to_vec(&event).map_err(std::io::Error::other)?;
                line.push(b'\n');
                Ok(Bytes::from(line))
            }
        });
        let body = Body::from_stream(futures::stream::iter(header_line).chain(lines));
        return Ok((
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        )
            .into_response());
    }

    let limit = pagination::limit(query.limit)?;
    let after: i64 = match &query.cursor {
        Some(cursor) => pagination::decode(cursor)?
            .parse()
            .map_err(|_| ApiError::BadRequest {
                detail: "cursor is not one this API issued".into(),
            })?,
        None => 0,
    };
    let rows = event_store::audit::events_page(&pool, &aggregate_type, &aggregate_id, after, limit)
        .await?;
    if rows.is_empty() && after == 0 {
        return Err(not_found());
    }
    let next_cursor = (i64::try_from(rows.len()).unwrap_or(0) == limit)
        .then(|| {
            rows.last()
                .map(|e| pagination::encode(&e.sequence.to_string()))
        })
        .flatten();
    let items = rows.into_iter().map(AuditEvent::from).collect();
    Ok(Json(Page { items, next_cursor }).into_response())
}
