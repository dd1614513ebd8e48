//! `GET /v1/ops/digest` (the latest audit digest on the audit stream and its signature check)
//! and `GET /v1/ops/verify/{type}/{id}` (one aggregate's hash chain and fold, re-checked).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use audit::digest::Digest;
use audit::verify::{VerifyOptions, verify as verify_history};
use axum::Json;
use axum::extract::{Extension, Path, State};
use serde::Serialize;
use sqlx::PgPool;

use super::{OpsContext, OpsError};
use crate::problem::{ApiError, Problem};

/// How long the audit stream may take to answer (a NATS user without the permission gets no
/// answer at all, only a server-side error).
const DIGEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Findings listed at most per aggregate (all are counted).
const FINDINGS_MAX: usize = 100;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DigestView {
    /// The audit stream it was read from.
    pub stream: String,
    /// Its sequence in that stream (`tally audit verify --digest <sequence>` proves history
    /// up to it unchanged).
    pub sequence: u64,
    /// The digest as published (format, as_of_tx, position, event_count, aggregate_count,
    /// merkle_root, taken_at, signature).
    #[schema(value_type = Object)]
    pub digest: Digest,
    pub signature_check: SignatureCheck,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SignatureCheck {
    /// The signature matches the digest (and the configured key, if one is); an unsigned
    /// digest passes only when no key is configured.
    pub ok: bool,
    pub signed: bool,
    /// What the check found.
    pub detail: String,
    /// The key the digest says it was signed with.
    pub signed_by: Option<String>,
    /// The key it was checked against (`TALLY_AUDIT_PUBLIC_KEY`), when configured.
    pub expected_key: Option<String>,
}

/// The latest audit digest the command-service published, with its signature checked.
#[utoipa::path(
    get,
    path = "/v1/ops/digest",
    tag = "ops",
    responses(
        (status = 200, body = DigestView),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "No digest published yet"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The audit stream cannot be read"),
    )
)]
pub async fn latest(
    context: Option<Extension<Arc<OpsContext>>>,
) -> Result<Json<DigestView>, OpsError> {
    let Some(Extension(context)) = context else {
        return Err(OpsError::Unavailable(
            "this instance has no NATS context for ops; the audit stream cannot be read".into(),
        ));
    };
    let permission_hint = || {
        format!(
            "no answer from the audit stream {stream} within {s} s: the query-service's NATS user \
             needs publish permission on \"$JS.API.STREAM.MSG.GET.{stream}\"",
            stream = context.audit_stream,
            s = DIGEST_TIMEOUT.as_secs()
        )
    };
    let read = async {
        let stream = context
            .jetstream
            .get_stream_no_info(&context.audit_stream)
            .await
            .map_err(|e| OpsError::Unavailable(format!("audit stream: {e}")))?;
        stream
            .get_last_raw_message_by_subject(&context.digest_subject)
            .await
            .map_err(|e| match e.kind() {
                LastRawMessageErrorKind::NoMessageFound => OpsError::Api(ApiError::NotFound {
                    what: "audit digest (none published yet)".into(),
                }),
                _ => OpsError::Unavailable(format!("audit stream {}: {e}", context.audit_stream)),
            })
    };
    let message = tokio::time::timeout(DIGEST_TIMEOUT, read)
        .await
        .map_err(|_| OpsError::Unavailable(permission_hint()))??;
    let digest: Digest = serde_json::from_slice(&message.payload).map_err(|e| {
        OpsError::Api(ApiError::Corrupt {
            detail: format!(
                "{} sequence {} is not a digest: {e}",
                context.audit_stream, message.sequence
            ),
        })
    })?;
    let expected_key = context.digest_public_key.clone();
    let checked = audit::digest_signing::check(&digest, expected_key.as_deref());
    let signature_check = SignatureCheck {
        ok: checked.is_ok(),
        signed: digest.signature.is_some(),
        detail: match (&checked, &digest.signature, &expected_key) {
            (Err(error), _, _) => error.clone(),
            (Ok(()), None, _) => "not signed (no public key configured to require one)".into(),
            (Ok(()), Some(_), Some(_)) => "signed with the configured key".into(),
            (Ok(()), Some(_), None) => {
                "signature valid for the key it names (no key configured to pin)".into()
            }
        },
        signed_by: digest.signature.as_ref().map(|s| s.public_key.clone()),
        expected_key,
    };
    Ok(Json(DigestView {
        stream: context.audit_stream.clone(),
        sequence: message.sequence,
        digest,
        signature_check,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChainCheck {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// No findings: every link, the sequence run and the domain fold check out (and, for an
    /// account, the read model agrees when it has caught up).
    pub ok: bool,
    pub events: u64,
    /// Hex SHA-256 of the last event's stored hash: the aggregate's chain head.
    pub head: String,
    /// At most 100; `findings_total` counts them all.
    #[schema(value_type = Vec<Object>)]
    pub findings: Vec<audit::Finding>,
    pub findings_total: u64,
    /// An account's read model compared with its history (false while it is behind).
    pub read_model_compared: bool,
}

/// Re-checks one aggregate's hash chain and fold from the event store.
#[utoipa::path(
    get,
    path = "/v1/ops/verify/{aggregate_type}/{aggregate_id}",
    tag = "ops",
    params(("aggregate_type" = String, Path, description = "e.g. `account`"), ("aggregate_id" = String, Path)),
    responses(
        (status = 200, body = ChainCheck),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn verify(
    State(pool): State<PgPool>,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
) -> Result<Json<ChainCheck>, ApiError> {
    let options = VerifyOptions {
        aggregate: Some((aggregate_type.clone(), aggregate_id.clone())),
        as_of_tx: None,
        compare_read_model: aggregate_type == "account",
        findings_max: FINDINGS_MAX,
    };
    let report = verify_history(&pool, &options, |_| {}).await?;
    if report.events == 0 {
        return Err(ApiError::NotFound {
            what: format!("{aggregate_type} {aggregate_id}"),
        });
    }
    let head = report
        .heads
        .last()
        .map(|(_, _, _, head)| head.iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default();
    Ok(Json(ChainCheck {
        aggregate_type,
        aggregate_id,
        ok: report.findings_total == 0,
        events: report.events,
        head,
        findings: report.findings,
        findings_total: report.findings_total,
        read_model_compared: report.read_models_compared > 0,
    }))
}
