//! Scopes and the principal a valid token describes.

use std::collections::BTreeSet;

/// What a token allows. `admin` allows everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Open accounts, deposit, withdraw, freeze, unfreeze, close.
    AccountsWrite,
    /// Read accounts, entries, transfers and command results.
    AccountsRead,
    /// Request transfers.
    TransfersWrite,
    /// Read the audit endpoints (full history, state at any point, flows).
    AuditRead,
    /// Everything, including the process manager's transfer steps.
    Admin,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown scope `{0}` (known: accounts:write, accounts:read, transfers:write, audit:read, admin)"
)]
pub struct UnknownScope(pub String);

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::AccountsWrite,
        Scope::AccountsRead,
        Scope::TransfersWrite,
        Scope::AuditRead,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::AccountsWrite => "accounts:write",
            Scope::AccountsRead => "accounts:read",
            Scope::TransfersWrite => "transfers:write",
            Scope::AuditRead => "audit:read",
            Scope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller, as a valid token describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`: recorded as the `actor` of every event it causes.
    pub subject: String,
    pub scopes: BTreeSet<Scope>,
    /// When set, the token sees and moves only this owner's accounts.
    pub owner: Option<String>,
}

impl Principal {
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    pub fn is_admin(&self) -> bool {
        self.scopes.contains(&Scope::Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_and_admin_allows_everything() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
        }
        assert!("accounts:delete".parse::<Scope>().is_err());
        let admin = Principal {
            subject: "ops".into(),
            scopes: [Scope::Admin].into(),
            owner: None,
        };
        assert!(Scope::ALL.iter().all(|s| admin.allows(*s)));
        let reader = Principal {
            subject: "r".into(),
            scopes: [Scope::AccountsRead].into(),
            owner: None,
        };
        assert!(reader.allows(Scope::AccountsRead));
        assert!(!reader.allows(Scope::AccountsWrite));
    }
}
