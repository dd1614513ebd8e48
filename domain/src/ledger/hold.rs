//! The Hold aggregate: funds reserved on one account (`hold.place`), then captured in full or
//! in part to another account (`hold.capture`, the rest released), voided (`hold.void`), or
//! expired at `expires_at` by the command-service's worker (`expire`, never a client's). Each
//! hold ends exactly once: every end needs a hold that is still held.
//!
//! The reserve is on the account (`FundsHeld`, `FundsReleased`): its available balance is its
//! balance less what open holds reserve. A capture releases the hold and posts a one-leg
//! transaction whose id is the hold's (`LegsPosted`).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Book, LedgerError, SystemAccount};
use crate::account::{
    AccountError, AccountEvent, AccountStatus, FundsHeld, FundsReleased, HoldEnd,
};
use crate::money::{AMOUNT_MAX_MINOR, Amount};
use crate::validate::{self, ID_LEN_MAX, ID_PATTERN, REFERENCE_LEN_MAX};

pub const HOLD_EVENT_VERSION: &str = "1.0";
/// The furthest ahead a hold may expire. It also keeps every expiry a four-digit year, which
/// the expiry worker's text order relies on.
pub const HOLD_LIFETIME_MAX: chrono::TimeDelta = chrono::TimeDelta::days(3653);
pub const HOLD_EVENT_TYPES: [&str; 4] = ["HoldPlaced", "HoldCaptured", "HoldVoided", "HoldExpired"];
/// Names as they appear in subjects (`tally.cmd.hold.<name>`); `expire` is the worker's.
pub const HOLD_COMMAND_NAMES: [&str; 4] = ["place", "capture", "void", "expire"];

/// Reserve funds on an account (`tally.cmd.hold.place`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceHold {
    pub hold_id: Uuid,
    #[schemars(length(min = 1, max = ID_LEN_MAX), pattern(ID_PATTERN))]
    pub account_id: String,
    /// Minor units, 1 to 10^15.
    #[schemars(range(min = 1, max = AMOUNT_MAX_MINOR))]
    pub amount: i64,
    /// When the hold lapses by itself (RFC 3339); never when absent. Must be in the future.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    #[schemars(length(max = REFERENCE_LEN_MAX))]
    pub reference: String,
}

/// Turn a hold into a posting to `to` (`tally.cmd.hold.capture`): the whole amount when
/// `amount` is absent, else that much, the rest released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureHold {
    pub hold_id: Uuid,
    #[serde(default)]
    #[schemars(range(min = 1, max = AMOUNT_MAX_MINOR))]
    pub amount: Option<i64>,
    /// A client account or a system account (`@world:EUR` for money leaving the ledger).
    #[schemars(length(min = 1, max = 64))]
    pub to: String,
}

/// Release a hold (`tally.cmd.hold.void`), or let the worker release an expired one
/// (`tally.cmd.hold.expire`, scope `admin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidHold {
    pub hold_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldCommand {
    Place(PlaceHold),
    Capture(CaptureHold),
    Void(VoidHold),
    Expire(VoidHold),
}

impl HoldCommand {
    pub fn name(&self) -> &'static str {
        match self {
            HoldCommand::Place(_) => "place",
            HoldCommand::Capture(_) => "capture",
            HoldCommand::Void(_) => "void",
            HoldCommand::Expire(_) => "expire",
        }
    }

    pub fn hold_id(&self) -> Uuid {
        match self {
            HoldCommand::Place(c) => c.hold_id,
            HoldCommand::Capture(c) => c.hold_id,
            HoldCommand::Void(c) | HoldCommand::Expire(c) => c.hold_id,
        }
    }

    pub fn from_json(
        name: &str,
        body: serde_json::Value,
    ) -> Result<Self, crate::account::DecodeError> {
        use crate::account::DecodeError;
        fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, DecodeError> {
            serde_json::from_value(v).map_err(DecodeError::Body)
        }
        Ok(match name {
            "place" => HoldCommand::Place(parse(body)?),
            "capture" => HoldCommand::Capture(parse(body)?),
            "void" => HoldCommand::Void(parse(body)?),
            "expire" => HoldCommand::Expire(parse(body)?),
            other => return Err(DecodeError::UnknownCommand(other.to_owned())),
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        let value = match self {
            HoldCommand::Place(c) => serde_json::to_value(c),
            HoldCommand::Capture(c) => serde_json::to_value(c),
            HoldCommand::Void(c) | HoldCommand::Expire(c) => serde_json::to_value(c),
        };
        value.unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HoldPlaced {
    pub hold_id: Uuid,
    pub account_id: String,
    pub currency: String,
    /// Minor units.
    pub amount: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reference: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HoldCaptured {
    /// Minor units posted to `to`.
    pub amount: i64,
    pub to: String,
    /// Minor units released uncaptured.
    pub released: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HoldVoided {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HoldExpired {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HoldEvent {
    HoldPlaced(HoldPlaced),
    HoldCaptured(HoldCaptured),
    HoldVoided(HoldVoided),
    HoldExpired(HoldExpired),
}

impl DomainEvent for HoldEvent {
    fn event_type(&self) -> String {
        match self {
            HoldEvent::HoldPlaced(_) => "HoldPlaced",
            HoldEvent::HoldCaptured(_) => "HoldCaptured",
            HoldEvent::HoldVoided(_) => "HoldVoided",
            HoldEvent::HoldExpired(_) => "HoldExpired",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        HOLD_EVENT_VERSION.to_owned()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldStatus {
    #[default]
    Unplaced,
    Held,
    Captured,
    Voided,
    Expired,
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Unplaced => "unplaced",
            HoldStatus::Held => "held",
            HoldStatus::Captured => "captured",
            HoldStatus::Voided => "voided",
            HoldStatus::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: Option<Uuid>,
    pub account_id: String,
    pub currency: String,
    pub amount: i64,
    pub expires_at: Option<DateTime<Utc>>,
    pub status: HoldStatus,
    pub captured: i64,
}

impl Hold {
    /// Whether the hold has lapsed at `now`, released or not.
    pub fn lapsed(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Decides `command` on this hold and the accounts in `book` at `now`, for a sender bound
    /// to `owner` (`None`: any). The hold's account must be in `book` (and, for a capture,
    /// the destination unless it is a system account).
    pub fn decide(
        &self,
        command: &HoldCommand,
        book: &mut Book,
        owner: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Vec<HoldEvent>, LedgerError> {
        match command {
            HoldCommand::Place(c) => self.place(c, book, owner, now),
            HoldCommand::Capture(c) => self.capture(c, book, owner, now),
            HoldCommand::Void(_) => {
                self.open_to(book, owner)?;
                book.record(&self.account_id, vec![self.released(HoldEnd::Voided)]);
                Ok(vec![HoldEvent::HoldVoided(HoldVoided {})])
            }
            HoldCommand::Expire(_) => {
                self.require_held()?;
                if !self.lapsed(now) {
                    return Err(LedgerError::NotDue {
                        reason: match self.expires_at {
                            Some(at) => format!("it expires at {}", at.to_rfc3339()),
                            None => "it has no expiry".into(),
                        },
                    });
                }
                book.record(&self.account_id, vec![self.released(HoldEnd::Expired)]);
                Ok(vec![HoldEvent::HoldExpired(HoldExpired {})])
            }
        }
    }

    fn place(
        &self,
        c: &PlaceHold,
        book: &mut Book,
        owner: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Vec<HoldEvent>, LedgerError> {
        let on_account = |e: AccountError| LedgerError::account(&c.account_id, None, e);
        validate::aggregate_id("account_id", &c.account_id).map_err(on_account)?;
        validate::optional_text("reference", &c.reference, REFERENCE_LEN_MAX)
            .map_err(on_account)?;
        let amount = Amount::new(c.amount).map_err(|e| on_account(e.into()))?;
        if c.expires_at
            .is_some_and(|at| at <= now || at - now > HOLD_LIFETIME_MAX)
        {
            return Err(LedgerError::invalid(
                "expires_at",
                "must be in the future, and at most 10 years ahead",
            ));
        }
        let expires_at = c.expires_at.map(whole_second_after);
        if self.status != HoldStatus::Unplaced {
            return Err(LedgerError::AlreadyExists { what: "hold" });
        }
        let account = book.account(&c.account_id);
        if let Some(owner) = owner
            && account.status != AccountStatus::Unopened
            && account.owner != owner
        {
            return Err(on_account(AccountError::NotVisible));
        }
        account.require_live().map_err(on_account)?;
        if account.status == AccountStatus::Frozen {
            return Err(on_account(AccountError::Frozen));
        }
        account.hold_within_limits(amount).map_err(on_account)?;
        book.record(
            &c.account_id,
            vec![AccountEvent::FundsHeld(FundsHeld {
                hold_id: c.hold_id,
                amount: c.amount,
                expires_at,
            })],
        );
        Ok(vec![HoldEvent::HoldPlaced(HoldPlaced {
            hold_id: c.hold_id,
            account_id: c.account_id.clone(),
            currency: account.currency,
            amount: c.amount,
            expires_at,
            reference: c.reference.clone(),
        })])
    }

    fn capture(
        &self,
        c: &CaptureHold,
        book: &mut Book,
        owner: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Vec<HoldEvent>, LedgerError> {
        self.open_to(book, owner)?;
        if self.lapsed(now) {
            return Err(LedgerError::HoldEnded {
                status: HoldStatus::Expired.as_str(),
            });
        }
        let requested = c.amount.unwrap_or(self.amount);
        Amount::new(requested)
            .map_err(|e| LedgerError::account(&self.account_id, None, e.into()))?;
        if requested > self.amount {
            return Err(LedgerError::CaptureExceedsHold {
                held: self.amount,
                requested,
            });
        }
        if c.to == self.account_id {
            return Err(LedgerError::invalid(
                "to",
                "must differ from the hold's account",
            ));
        }
        let leg = super::Leg {
            from: self.account_id.clone(),
            to: c.to.clone(),
            amount: requested,
            currency: self.currency.clone(),
        };
        let posting = super::PostTransaction {
            transaction_id: self.id.unwrap_or_default(),
            legs: vec![leg],
            reference: String::new(),
            metadata: Default::default(),
        };
        // Released first, so the capture debits funds that are no longer reserved; posted as
        // the hold's own one-leg posting, by the same rules as any leg.
        let mut after = book.clone();
        after.record(&self.account_id, vec![self.released(HoldEnd::Captured)]);
        // The owner was checked above (the hold is the sender's); the destination need not be
        // the sender's, but its refusal is told without its figures.
        let sender = super::transaction::Sender {
            owner: None,
            viewer: owner,
        };
        super::transaction::post_legs(&posting, &mut after, sender, true)?;
        *book = after;
        Ok(vec![HoldEvent::HoldCaptured(HoldCaptured {
            amount: requested,
            to: c.to.clone(),
            released: self.amount - requested,
        })])
    }

    /// A hold still held, on an account the sender may act on.
    fn open_to(&self, book: &Book, owner: Option<&str>) -> Result<(), LedgerError> {
        if let Some(owner) = owner
            && self.status != HoldStatus::Unplaced
            && book.account(&self.account_id).owner != owner
        {
            // Another owner's hold: to this sender, a hold nobody placed.
            return Err(LedgerError::HoldNotVisible);
        }
        self.require_held()
    }

    fn require_held(&self) -> Result<(), LedgerError> {
        match self.status {
            HoldStatus::Unplaced => Err(LedgerError::HoldNotFound),
            HoldStatus::Held => Ok(()),
            ended => Err(LedgerError::HoldEnded {
                status: ended.as_str(),
            }),
        }
    }

    fn released(&self, end: HoldEnd) -> AccountEvent {
        AccountEvent::FundsReleased(FundsReleased {
            hold_id: self.id.unwrap_or_default(),
            amount: self.amount,
            end,
        })
    }
}

/// Expiries are kept to the second, rounded up (a hold never lapses before it was asked to):
/// stored as `YYYY-MM-DDTHH:MM:SSZ`, their text sorts as their time, which is what the
/// expiry worker's index relies on.
pub fn whole_second_after(at: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::{SubsecRound, TimeDelta};
    let truncated = at.trunc_subsecs(0);
    if truncated == at {
        return at;
    }
    // Only at chrono's last representable second is there none after: keep the truncation.
    truncated
        .checked_add_signed(TimeDelta::seconds(1))
        .unwrap_or(truncated)
}

/// Whether a capture's destination needs loading as an account.
pub fn is_client_account(id: &str) -> bool {
    !SystemAccount::is_system_id(id)
}

impl Aggregate for Hold {
    const TYPE: &'static str = "hold";
    type Command = HoldCommand;
    type Event = HoldEvent;
    type Error = LedgerError;
    type Services = ();

    /// A hold is decided with its accounts ([`Hold::decide`]).
    async fn handle(
        &mut self,
        _command: Self::Command,
        _services: &Self::Services,
        _sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        Err(LedgerError::invalid(
            "hold_id",
            "a hold must be decided with its accounts",
        ))
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            HoldEvent::HoldPlaced(e) => {
                self.id = Some(e.hold_id);
                self.account_id = e.account_id;
                self.currency = e.currency;
                self.amount = e.amount;
                self.expires_at = e.expires_at;
                self.status = HoldStatus::Held;
            }
            HoldEvent::HoldCaptured(e) => {
                self.captured = e.amount;
                self.status = HoldStatus::Captured;
            }
            HoldEvent::HoldVoided(_) => self.status = HoldStatus::Voided,
            HoldEvent::HoldExpired(_) => self.status = HoldStatus::Expired,
        }
    }
}
