//! Cursor pagination: `limit` (1..=500, default 50) and an opaque `cursor`, which is the last
//! key of the previous page (keyset pagination: stable when rows are inserted meanwhile).

use crate::problem::ApiError;

pub const LIMIT_DEFAULT: i64 = 50;
pub const LIMIT_MAX: i64 = 500;

pub fn limit(requested: Option<i64>) -> Result<i64, ApiError> {
    match requested {
        None => Ok(LIMIT_DEFAULT),
        Some(n) if (1..=LIMIT_MAX).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::BadRequest {
            detail: format!("limit must be between 1 and {LIMIT_MAX}, got {n}"),
        }),
    }
}

/// Encodes a key as an opaque cursor (hex of its bytes, prefixed with a version).
pub fn encode(key: &str) -> String {
    let mut out = String::with_capacity(2 + key.len() * 2);
    out.push_str("c1");
    for byte in key.bytes() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

pub fn decode(cursor: &str) -> Result<String, ApiError> {
    let invalid = || ApiError::BadRequest {
        detail: "cursor is not one this API issued".into(),
    };
    let hex = cursor.strip_prefix("c1").ok_or_else(invalid)?.as_bytes();
    if hex.len() % 2 != 0 || hex.len() > 512 {
        return Err(invalid());
    }
    // Byte pairs, not string slices: a client's cursor may hold any character, and slicing a
    // `str` inside a multibyte one panics. Only ASCII hex digits count (`from_str_radix`
    // would also take a sign).
    let nibble = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = hex
        .chunks_exact(2)
        .map(|pair| Some((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)?;
    let key = String::from_utf8(bytes).map_err(|_| invalid())?;
    // No key this API issues holds NUL, and PostgreSQL text cannot: refused here, not by the
    // database as an internal error.
    if key.contains('\0') {
        return Err(invalid());
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        for key in ["acc-1", "", "ü"] {
            assert_eq!(decode(&encode(key)).ok().as_deref(), Some(key));
        }
        for bad in ["", "zz", "c1zz", "c1a", "c1ff"] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn multibyte_and_nul_cursors_are_refused_not_panicked_on() {
        // Even in length, but a character boundary falls inside a hex pair.
        for bad in [
            "c1a\u{e9}a",
            "c1\u{e9}",
            "c1\u{1f600}",
            "c1+1",
            "c1-1",
            "c100",
        ] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(limit(None).ok(), Some(LIMIT_DEFAULT));
        assert_eq!(limit(Some(500)).ok(), Some(500));
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(501)).is_err());
    }
}
