//! `/console`: the operator console, static files embedded in the binary (docs/console.md).
//!
//! The page holds no data and no secret: it asks for a token, keeps it in the tab's session
//! storage, and reads everything through the authenticated `/v1` API, which refuses what the
//! token may not see. Served with a policy that lets it load only its own files and talk only
//! to this origin; no inline script or style anywhere in it.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;

/// The console's own policy (the router keeps it instead of the API's `default-src 'none'`).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file the console has: name under `/console/`, content type, bytes.
const ASSETS: [(&str, &str, &str); 11] = [
    ("index.html", HTML, include_str!("assets/index.html")),
    ("style.css", CSS, include_str!("assets/style.css")),
    ("app.js", JS, include_str!("assets/app.js")),
    ("api.js", JS, include_str!("assets/api.js")),
    ("dom.js", JS, include_str!("assets/dom.js")),
    ("chart.js", JS, include_str!("assets/chart.js")),
    ("feed.js", JS, include_str!("assets/feed.js")),
    ("accounts.js", JS, include_str!("assets/accounts.js")),
    ("account.js", JS, include_str!("assets/account.js")),
    ("transfer.js", JS, include_str!("assets/transfer.js")),
    ("ops.js", JS, include_str!("assets/ops.js")),
];

/// The routes, mounted without authentication (the page asks for a token; every read it makes
/// goes through the authenticated API).
pub fn routes() -> Router<PgPool> {
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/{file}", get(asset))
}

async fn index() -> Response {
    serve("index.html")
}

async fn asset(Path(file): Path<String>) -> Response {
    serve(&file)
}

fn serve(name: &str) -> Response {
    let mut response = match ASSETS.iter().find(|(file, _, _)| *file == name) {
        Some((_, content_type, body)) => {
            ([(header::CONTENT_TYPE, *content_type)], *body).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such console file\n",
        )
            .into_response(),
    };
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ` on<letters>=` anywhere: an inline event handler (`onclick=`, `onload =`...).
    fn has_handler_attribute(html: &str) -> bool {
        html.match_indices(" on").any(|(i, _)| {
            let rest = &html[i + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            name_len > 0 && rest[name_len..].trim_start().starts_with('=')
        })
    }

    /// The page must run under its own policy: no inline script, no handler attributes, no
    /// style attributes, and every file it names is one that is served.
    #[test]
    fn assets_hold_nothing_the_policy_would_block() {
        for (name, _, body) in ASSETS {
            let lower = body.to_ascii_lowercase();
            assert!(!lower.contains("style=\""), "{name}: style attribute");
            assert!(!lower.contains("innerhtml"), "{name}: innerHTML");
            assert!(!lower.contains("eval("), "{name}: eval");
            if name.ends_with(".html") {
                for (i, _) in lower.match_indices("<script") {
                    let tag = &lower[i..lower[i..].find('>').map_or(lower.len(), |e| i + e)];
                    assert!(tag.contains(" src="), "{name}: inline script");
                }
                assert!(
                    !has_handler_attribute(&lower),
                    "{name}: event handler attribute"
                );
            }
        }
        for (name, _, body) in ASSETS {
            for import in body.split("from './").skip(1) {
                let file = import.split('\'').next().unwrap_or_default();
                assert!(
                    ASSETS.iter().any(|(f, _, _)| *f == file),
                    "{name} imports {file}, which is not served"
                );
            }
        }
    }
}
