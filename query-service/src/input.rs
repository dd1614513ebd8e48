//! What no handler gets to see: a path or query string whose percent-decoded bytes are not
//! UTF-8 or hold NUL. Axum would answer the first with a plain-text 400 of its own (or, in a
//! query, replace the bytes), and PostgreSQL refuses NUL in text, which would surface as an
//! internal error: both are the client's bad input, answered `bad_request` here, once, for
//! every route.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::problem::ApiError;

/// Middleware on the `/v1` routes.
pub async fn reject_unusable(request: Request, next: Next) -> Response {
    let uri = request.uri();
    for (part, raw) in [("path", Some(uri.path())), ("query", uri.query())] {
        if let Some(raw) = raw
            && let Err(why) = usable(raw)
        {
            return ApiError::BadRequest {
                detail: format!("the {part} {why}"),
            }
            .into_response();
        }
    }
    next.run(request).await
}

/// Whether `raw` (percent-encoded) decodes to UTF-8 without NUL; if not, why.
fn usable(raw: &str) -> Result<(), &'static str> {
    let bytes = percent_decoded(raw);
    if bytes.contains(&0) {
        return Err("holds a NUL byte (%00)");
    }
    if std::str::from_utf8(&bytes).is_err() {
        return Err("is not UTF-8 once percent-decoded");
    }
    Ok(())
}

/// `raw` with each `%XX` replaced by its byte; a `%` not followed by two hex digits stays, as
/// the decoders of paths and queries leave it.
fn percent_decoded(raw: &str) -> Vec<u8> {
    let bytes = raw.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| Some((hex(*bytes.get(i + 1)?)? << 4) | hex(*bytes.get(i + 2)?)?))
            .flatten();
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_and_non_utf8_are_refused_and_the_rest_passes() {
        for good in [
            "/v1/accounts/acc-1",
            "owner=%C3%A9&cursor=c1ab",
            "a%zz%",
            "%2500",
            "",
        ] {
            assert_eq!(usable(good), Ok(()), "{good}");
        }
        for bad in ["/v1/accounts/%00", "owner=a%00", "cursor=%FF", "%C3", "%e9"] {
            assert!(usable(bad).is_err(), "{bad}");
        }
        assert_eq!(percent_decoded("a%41%4a%"), b"aAJ%");
    }
}
