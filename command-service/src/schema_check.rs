//! Command bodies are checked against the checked-in JSON Schemas in `schemas/commands/`, the
//! same files clients read, before they reach the domain.

use std::collections::HashMap;

use domain::ErrorCode;
use jsonschema::Validator;
use serde_json::json;

use crate::rejection::Rejection;

/// The schemas, embedded at build time (the drift test keeps them equal to the Rust types).
const COMMAND_SCHEMAS: [(&str, &str, &str); 23] = [
    (
        "account",
        "open",
        include_str!("../../schemas/commands/account.open.json"),
    ),
    (
        "account",
        "deposit",
        include_str!("../../schemas/commands/account.deposit.json"),
    ),
    (
        "account",
        "withdraw",
        include_str!("../../schemas/commands/account.withdraw.json"),
    ),
    (
        "account",
        "freeze",
        include_str!("../../schemas/commands/account.freeze.json"),
    ),
    (
        "account",
        "unfreeze",
        include_str!("../../schemas/commands/account.unfreeze.json"),
    ),
    (
        "account",
        "close",
        include_str!("../../schemas/commands/account.close.json"),
    ),
    (
        "account",
        "debit",
        include_str!("../../schemas/commands/account.debit.json"),
    ),
    (
        "account",
        "credit",
        include_str!("../../schemas/commands/account.credit.json"),
    ),
    (
        "account",
        "refund",
        include_str!("../../schemas/commands/account.refund.json"),
    ),
    (
        "account",
        "settle",
        include_str!("../../schemas/commands/account.settle.json"),
    ),
    (
        "transfer",
        "request",
        include_str!("../../schemas/commands/transfer.request.json"),
    ),
    (
        "transfer",
        "record_debit",
        include_str!("../../schemas/commands/transfer.record_debit.json"),
    ),
    (
        "transfer",
        "record_credit",
        include_str!("../../schemas/commands/transfer.record_credit.json"),
    ),
    (
        "transfer",
        "complete",
        include_str!("../../schemas/commands/transfer.complete.json"),
    ),
    (
        "transfer",
        "fail",
        include_str!("../../schemas/commands/transfer.fail.json"),
    ),
    (
        "transfer",
        "record_refund",
        include_str!("../../schemas/commands/transfer.record_refund.json"),
    ),
    (
        "account",
        "set_limits",
        include_str!("../../schemas/commands/account.set_limits.json"),
    ),
    (
        "transaction",
        "post",
        include_str!("../../schemas/commands/transaction.post.json"),
    ),
    (
        "hold",
        "place",
        include_str!("../../schemas/commands/hold.place.json"),
    ),
    (
        "hold",
        "capture",
        include_str!("../../schemas/commands/hold.capture.json"),
    ),
    (
        "hold",
        "void",
        include_str!("../../schemas/commands/hold.void.json"),
    ),
    (
        "hold",
        "expire",
        include_str!("../../schemas/commands/hold.expire.json"),
    ),
    (
        "batch",
        "submit",
        include_str!("../../schemas/commands/batch.submit.json"),
    ),
];

/// At most this many schema errors are reported in one reply.
const ERRORS_REPORTED_MAX: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum SchemaLoadError {
    #[error("schema for {aggregate}.{command} is not valid JSON")]
    Json {
        aggregate: &'static str,
        command: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("schema for {aggregate}.{command} does not compile: {message}")]
    Compile {
        aggregate: &'static str,
        command: &'static str,
        message: String,
    },
}

pub struct SchemaRegistry {
    validators: HashMap<(&'static str, &'static str), Validator>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("commands", &self.validators.len())
            .finish()
    }
}

impl SchemaRegistry {
    pub fn load() -> Result<Self, SchemaLoadError> {
        let mut validators = HashMap::new();
        for (aggregate, command, text) in COMMAND_SCHEMAS {
            let schema: serde_json::Value =
                serde_json::from_str(text).map_err(|source| SchemaLoadError::Json {
                    aggregate,
                    command,
                    source,
                })?;
            let validator =
                jsonschema::validator_for(&schema).map_err(|e| SchemaLoadError::Compile {
                    aggregate,
                    command,
                    message: e.to_string(),
                })?;
            validators.insert((aggregate, command), validator);
        }
        Ok(SchemaRegistry { validators })
    }

    pub fn knows(&self, aggregate: &str, command: &str) -> bool {
        self.validators
            .keys()
            .any(|(a, c)| *a == aggregate && *c == command)
    }

    /// `Ok` when `body` matches; otherwise `schema_violation` naming each failing field path, or
    /// `amount_out_of_range` when the only problem is an amount outside its bounds.
    pub fn check(
        &self,
        aggregate: &str,
        command: &str,
        body: &serde_json::Value,
    ) -> Result<(), Rejection> {
        let Some(validator) = self
            .validators
            .iter()
            .find(|((a, c), _)| *a == aggregate && *c == command)
            .map(|(_, v)| v)
        else {
            return Err(Rejection::new(
                ErrorCode::UnknownCommand,
                format!("unknown command `{aggregate}.{command}`"),
            ));
        };
        let errors: Vec<_> = validator
            .iter_errors(body)
            .take(ERRORS_REPORTED_MAX)
            .map(|e| {
                (
                    e.instance_path().as_str().to_owned(),
                    e.kind().keyword().to_owned(),
                    e.to_string(),
                )
            })
            .collect();
        let Some((first_path, _, first_message)) = errors.first() else {
            return Ok(());
        };
        let amount_only = errors.iter().all(|(path, keyword, _)| {
            path == "/amount" && matches!(keyword.as_str(), "minimum" | "maximum")
        });
        let details = json!({
            "errors": errors
                .iter()
                .map(|(path, keyword, message)| json!({"path": path, "keyword": keyword, "message": message}))
                .collect::<Vec<_>>()
        });
        let code = if amount_only {
            ErrorCode::AmountOutOfRange
        } else {
            ErrorCode::SchemaViolation
        };
        let at = if first_path.is_empty() {
            "body".to_owned()
        } else {
            format!("`{first_path}`")
        };
        Err(Rejection::new(code, format!("{at}: {first_message}")).with_details(details))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> SchemaRegistry {
        SchemaRegistry::load().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn valid_bodies_pass() {
        let ok = json!({"account_id": "a-1", "amount": 5, "reference": "x"});
        assert_eq!(registry().check("account", "deposit", &ok), Ok(()));
    }

    #[test]
    fn errors_name_the_field() {
        let bad = json!({"account_id": "a.1", "amount": 5});
        let rejection = registry()
            .check("account", "deposit", &bad)
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert_eq!(rejection.code, ErrorCode::SchemaViolation);
        assert!(
            rejection.message.contains("/account_id"),
            "{}",
            rejection.message
        );
        assert_eq!(rejection.details["errors"][0]["path"], "/account_id");
    }

    #[test]
    fn missing_and_unknown_fields_are_violations() {
        for bad in [
            json!({"account_id": "a"}),
            json!({"account_id": "a", "amount": 1, "extra": true}),
            json!({"account_id": "a", "amount": "1"}),
        ] {
            let rejection = registry().check("account", "deposit", &bad).err();
            assert_eq!(
                rejection.map(|r| r.code),
                Some(ErrorCode::SchemaViolation),
                "{bad}"
            );
        }
    }

    #[test]
    fn amounts_out_of_bounds_have_their_own_code() {
        for amount in [0, -5, 1_000_000_000_000_001_i64] {
            let bad = json!({"account_id": "a", "amount": amount});
            let rejection = registry().check("account", "withdraw", &bad).err();
            assert_eq!(rejection.map(|r| r.code), Some(ErrorCode::AmountOutOfRange));
        }
    }

    #[test]
    fn unknown_commands_are_refused() {
        let rejection = registry().check("account", "explode", &json!({})).err();
        assert_eq!(rejection.map(|r| r.code), Some(ErrorCode::UnknownCommand));
    }
}
