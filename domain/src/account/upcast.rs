//! Old event versions, read as today's. Rows are never rewritten (their hashes would break);
//! every reader upcasts on the way in instead: the command-service through cqrs-es's
//! upcasters, and projections, audits and rebuilds through [`upcast_payload`], which is the
//! same function.

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use serde::Deserialize;
use serde_json::Value;

use super::AccountEvent;
use super::events::{DepositChannel, MONEY_DEPOSITED_VERSION};

const MONEY_DEPOSITED: &str = "MoneyDeposited";

// `MoneyDeposited` as stored at version 1.0, frozen here for its published schema (which must
// not change, so doc comments here are exactly the 1.0 ones).
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[schemars(rename = "MoneyDeposited")]
pub struct MoneyDepositedV1 {
    /// Minor units.
    pub amount: i64,
    pub reference: String,
    /// The balance after this deposit, so that a reader of one event knows the running balance.
    pub balance_after: i64,
}

/// `MoneyDeposited` 1.0 -> 2.0: `channel` did not exist and reads as `unspecified`.
fn money_deposited_v2(mut payload: Value) -> Value {
    if let Some(body) = payload
        .get_mut(MONEY_DEPOSITED)
        .and_then(Value::as_object_mut)
    {
        body.entry("channel")
            .or_insert_with(|| serde_json::json!(DepositChannel::Unspecified));
    }
    payload
}

/// `MoneyDeposited` 1.0 -> 2.0. Not cqrs-es's `SemanticVersionEventUpcaster`: that one
/// rewrites the version as `2.0.0`, and stored versions are spelled `2.0`.
#[derive(Debug)]
struct MoneyDepositedV2;

impl EventUpcaster for MoneyDepositedV2 {
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        event_type == MONEY_DEPOSITED && event_version == "1.0"
    }

    fn upcast(&self, mut event: SerializedEvent) -> SerializedEvent {
        event.payload = money_deposited_v2(event.payload);
        MONEY_DEPOSITED_VERSION.clone_into(&mut event.event_version);
        event
    }
}

/// Every upcaster, oldest first.
static UPCASTERS: [&dyn EventUpcaster; 1] = [&MoneyDepositedV2];

/// One of [`UPCASTERS`] as the owned upcaster cqrs-es takes.
struct Listed(&'static dyn EventUpcaster);

impl EventUpcaster for Listed {
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        self.0.can_upcast(event_type, event_version)
    }

    fn upcast(&self, event: SerializedEvent) -> SerializedEvent {
        self.0.upcast(event)
    }
}

/// The upcasters for cqrs-es's `PersistedEventStore::with_upcasters`, oldest first.
pub fn account_upcasters() -> Vec<Box<dyn EventUpcaster>> {
    UPCASTERS
        .iter()
        .map(|u| Box::new(Listed(*u)) as Box<dyn EventUpcaster>)
        .collect()
}

/// Applies every upcaster that matches, in order.
pub fn upcast_event(mut event: SerializedEvent) -> SerializedEvent {
    for upcaster in UPCASTERS {
        if upcaster.can_upcast(&event.event_type, &event.event_version) {
            event = upcaster.upcast(event);
        }
    }
    event
}

/// Reads a stored payload of `event_type` at `event_version` as today's [`AccountEvent`]. A
/// current version is read from `payload` where it lies; only an old one is copied to be
/// upcast. Readers of many events (projections, rebuilds, audits) call this once per event,
/// and copying every payload tree was a large share of their allocations.
pub fn read_event(
    event_type: &str,
    event_version: &str,
    payload: &Value,
) -> Result<AccountEvent, serde_json::Error> {
    if UPCASTERS
        .iter()
        .any(|u| u.can_upcast(event_type, event_version))
    {
        let (_, upcast) = upcast_payload(event_type, event_version, payload.clone());
        AccountEvent::deserialize(upcast)
    } else {
        AccountEvent::deserialize(payload)
    }
}

/// Upcasts a stored payload of `event_type` at `event_version` to the current version and
/// returns that version with it. Unknown types and current versions pass through unchanged.
pub fn upcast_payload(event_type: &str, event_version: &str, payload: Value) -> (String, Value) {
    let event = upcast_event(SerializedEvent {
        aggregate_id: String::new(),
        sequence: 0,
        aggregate_type: String::new(),
        event_type: event_type.to_owned(),
        event_version: event_version.to_owned(),
        payload,
        metadata: Value::Null,
    });
    (event.event_version, event.payload)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::account::AccountEvent;
    use serde_json::json;

    #[test]
    fn read_event_upcasts_old_versions_and_reads_current_ones_as_they_are() {
        let v1 = json!({"MoneyDeposited": {"amount": 5, "reference": "r", "balance_after": 5}});
        let AccountEvent::MoneyDeposited(d) = read_event("MoneyDeposited", "1.0", &v1).unwrap()
        else {
            panic!("not a deposit");
        };
        assert_eq!(d.channel, DepositChannel::Unspecified);
        // A current version is not upcast: without its channel it does not read at all.
        assert!(read_event("MoneyDeposited", MONEY_DEPOSITED_VERSION, &v1).is_err());
        let v2 = json!({"MoneyDeposited": {"amount": 5, "reference": "r", "balance_after": 5, "channel": "cash"}});
        let AccountEvent::MoneyDeposited(d) =
            read_event("MoneyDeposited", MONEY_DEPOSITED_VERSION, &v2).unwrap()
        else {
            panic!("not a deposit");
        };
        assert_eq!((d.amount, d.channel), (5, DepositChannel::Cash));
    }

    #[test]
    fn a_v1_deposit_reads_as_v2_with_an_unspecified_channel() {
        let v1 = json!({"MoneyDeposited": {"amount": 5, "reference": "r", "balance_after": 5}});
        assert!(serde_json::from_value::<AccountEvent>(v1.clone()).is_err());
        let (version, payload) = upcast_payload("MoneyDeposited", "1.0", v1);
        assert_eq!(version, MONEY_DEPOSITED_VERSION);
        let event: AccountEvent = serde_json::from_value(payload).unwrap();
        let AccountEvent::MoneyDeposited(d) = event else {
            panic!("not a deposit");
        };
        assert_eq!((d.amount, d.channel), (5, DepositChannel::Unspecified));
    }

    #[test]
    fn current_versions_and_other_events_pass_unchanged() {
        let v2 = json!({"MoneyDeposited": {"amount": 5, "reference": "", "balance_after": 5, "channel": "cash"}});
        assert_eq!(upcast_payload("MoneyDeposited", "2.0", v2.clone()).1, v2);
        let w = json!({"MoneyWithdrawn": {"amount": 5, "reference": "", "balance_after": 0}});
        assert_eq!(
            upcast_payload("MoneyWithdrawn", "1.0", w.clone()),
            ("1.0".into(), w)
        );
    }
}
