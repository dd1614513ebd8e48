//! The OpenAPI 3.1 document, generated from the handlers' annotations. Served at
//! `/openapi.json` and checked in at `schemas/openapi.json` (a test fails when they drift).

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tally query API",
        description = "Read models of the Tally ledger, with read-your-writes.",
        license(name = "Apache-2.0")
    ),
    paths(
        crate::accounts::get,
        crate::accounts::list,
        crate::accounts::entries,
        crate::feed::http::account_feed,
        crate::feed::http::owner_feed,
        crate::statement::statement,
        crate::books::totals,
        crate::books::system_accounts,
        crate::transfers::get,
        crate::transfers::of_account,
        crate::transactions::get,
        crate::holds::get,
        crate::holds::of_account,
        crate::commands::get,
        crate::audit::events,
        crate::audit_state::state,
        crate::audit_flows::events,
        crate::ops::projections::status,
        crate::ops::dead_letters::list,
        crate::ops::dead_letters::retry,
        crate::ops::dead_letters::drop,
        crate::ops::digest::latest,
        crate::ops::digest::verify,
        healthz,
        readyz,
        metrics,
    ),
    components(schemas(crate::feed::Change)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "accounts", description = "Accounts, entries, statements, totals and system accounts"),
        (name = "feed", description = "Changes of accounts as they are applied, as Server-Sent Events, resumable"),
        (name = "transfers", description = "Transfers between accounts and where each stands"),
        (name = "transactions", description = "Multi-leg transactions as posted"),
        (name = "holds", description = "Funds reserved on accounts, and how each hold ended"),
        (name = "commands", description = "Results of commands"),
        (name = "audit", description = "Stored history with who/why and hashes; state at any point"),
        (name = "ops", description = "Operations (docs/console.md): projections and their lag, dead letters (retry and drop need admin), the latest audit digest, one aggregate's chain check; audit:read, no owner"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
struct ApiDoc;

/// Every `/v1` route takes `Authorization: Bearer <JWT>` (scopes in docs/security.md).
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".to_owned());
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
        // What every protected route may answer besides its own responses.
        let problem = |description: &str| {
            utoipa::openapi::ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(utoipa::openapi::Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            if let Some(operation) = item.get.as_mut() {
                let responses = &mut operation.responses.responses;
                for (status, description) in [
                    (
                        "400",
                        "Bad input, such as a path or query holding NUL (%00) or bytes that are not UTF-8 (`bad_request`)",
                    ),
                    ("401", "No valid bearer token (`unauthenticated`)"),
                    (
                        "403",
                        "The token lacks the scope, or is bound to an owner (`forbidden`)",
                    ),
                    (
                        "429",
                        "Over the request rate (`rate_limited`, with `Retry-After`)",
                    ),
                ] {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| problem(description).into());
                }
            }
        }
    }
}

/// Alive.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()), responses((status = 200, body = String)))]
#[allow(dead_code)] // documents platform::ops_http's handler
fn healthz() {}

/// Ready: PostgreSQL and NATS reachable, the accounts projection not too far behind.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "Ready", body = Object),
        (status = 503, description = "Not ready; the body says which check failed", body = Object),
    )
)]
#[allow(dead_code)] // documents platform::ops_http's handler
fn readyz() {}

/// Prometheus text: projection figures (applied, dropped, skipped, parked, position).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    security(()),
    responses((status = 200, body = String, content_type = "text/plain"))
)]
#[allow(dead_code)] // documents platform::ops_http's handler
fn metrics() {}

/// The document as pretty JSON with a trailing newline (the checked-in form).
pub fn document() -> String {
    // The derived document always serialises (string keys, no floats); an empty one would be
    // served and checked in, so debug builds and the drift tests stop on it.
    let json = ApiDoc::openapi().to_pretty_json();
    debug_assert!(
        json.is_ok(),
        "the OpenAPI document does not serialise: {json:?}"
    );
    let mut json = json.unwrap_or_default();
    json.push('\n');
    json
}

pub async fn serve() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document(),
    )
}
