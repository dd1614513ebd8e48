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
    let hex = cursor.strip_prefix("c1").ok_or_else(invalid)?;
    if hex.len() % 2 != 0 || hex.len() > 512 {
        return Err(invalid());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| invalid())?;
    String::from_utf8(bytes).map_err(|_| invalid())
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
    fn limits_are_bounded() {
        assert_eq!(limit(None).ok(), Some(LIMIT_DEFAULT));
        assert_eq!(limit(Some(500)).ok(), Some(500));
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(501)).is_err());
    }
}
