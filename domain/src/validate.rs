//! Field rules shared by every command: identifiers, names, currencies, free text.
//!
//! The JSON Schemas in `schemas/` state the same rules for clients; these functions are the
//! authority, because the domain must not trust that a caller validated anything.

use crate::account::AccountError;

pub const ID_LEN_MAX: usize = 64;
pub const OWNER_LEN_MAX: usize = 128;
pub const REFERENCE_LEN_MAX: usize = 256;
pub const REASON_LEN_MAX: usize = 512;

/// The pattern of an aggregate id. Ids become NATS subject tokens (`tally.evt.account.<id>`),
/// so dots, wildcards and whitespace are excluded.
pub const ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";
/// ISO 4217 alphabetic code.
pub const CURRENCY_PATTERN: &str = "^[A-Z]{3}$";

pub fn aggregate_id(field: &'static str, id: &str) -> Result<(), AccountError> {
    let ok = !id.is_empty()
        && id.len() <= ID_LEN_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(AccountError::invalid(
            field,
            format!("must be 1 to {ID_LEN_MAX} characters of A-Z, a-z, 0-9, '_' or '-'"),
        ))
    }
}

pub fn currency(field: &'static str, code: &str) -> Result<(), AccountError> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(AccountError::invalid(
            field,
            "must be an ISO 4217 code of three upper-case letters",
        ))
    }
}

/// Required free text: not blank, at most `max` characters, no control characters.
pub fn text(field: &'static str, value: &str, max: usize) -> Result<(), AccountError> {
    if value.trim().is_empty() {
        return Err(AccountError::invalid(field, "must not be blank"));
    }
    optional_text(field, value, max)
}

/// Free text that may be empty.
pub fn optional_text(field: &'static str, value: &str, max: usize) -> Result<(), AccountError> {
    if value.chars().count() > max {
        return Err(AccountError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(AccountError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Client metadata on accounts and transactions: at most this many entries.
pub const METADATA_ENTRIES_MAX: usize = 16;
pub const METADATA_KEY_LEN_MAX: usize = 64;
pub const METADATA_VALUE_LEN_MAX: usize = 256;

/// Client metadata: a small map of short keys to short, printable values.
pub fn metadata(
    field: &'static str,
    entries: &std::collections::BTreeMap<String, String>,
) -> Result<(), AccountError> {
    if entries.len() > METADATA_ENTRIES_MAX {
        return Err(AccountError::invalid(
            field,
            format!("must have at most {METADATA_ENTRIES_MAX} entries"),
        ));
    }
    for (key, value) in entries {
        let key_ok = !key.is_empty()
            && key.len() <= METADATA_KEY_LEN_MAX
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !key_ok {
            return Err(AccountError::invalid(
                field,
                format!(
                    "keys must be 1 to {METADATA_KEY_LEN_MAX} characters of A-Z, a-z, 0-9, '_', '-' or '.'"
                ),
            ));
        }
        optional_text(field, value, METADATA_VALUE_LEN_MAX)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(aggregate_id("id", "acc-1_A").is_ok());
        assert!(aggregate_id("id", &"a".repeat(ID_LEN_MAX)).is_ok());
        for bad in [
            "",
            "a.b",
            "a b",
            "a*",
            "a>",
            "é",
            &"a".repeat(ID_LEN_MAX + 1),
        ] {
            assert!(aggregate_id("id", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn currencies() {
        assert!(currency("c", "EUR").is_ok());
        for bad in ["eur", "EU", "EURO", "E1R", ""] {
            assert!(currency("c", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn texts() {
        assert!(text("t", "x", 1).is_ok());
        assert!(text("t", "  ", 5).is_err());
        assert!(text("t", "xy", 1).is_err());
        assert!(text("t", "a\u{0}b", 5).is_err());
        assert!(optional_text("t", "", 5).is_ok());
        // Length counts characters, not bytes.
        assert!(optional_text("t", "ééé", 3).is_ok());
    }
}
