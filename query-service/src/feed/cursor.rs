//! Where a feed stands, as the client carries it (`Last-Event-ID` or `?after=`).
//!
//! - One account: its consistency token, `account:<id>:<version>`: every change up to that
//!   version was delivered.
//! - One owner: `owner:<epoch>:<partition>=<position>,...`: every change of the owner's accounts
//!   at or below `position` in each projection partition was delivered (migration 0012). The
//!   epoch names the `accounts` table (its OID): a rebuild swaps in a new table whose rows carry
//!   no positions, so a cursor from before it cannot be honoured and the feed starts over.

use std::collections::BTreeMap;

use crate::problem::ApiError;

/// Partitions a cursor may name (the projection's partition count is far below this).
const PARTITIONS_MAX: usize = 1_024;

/// An owner feed's position in each partition of the accounts projection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    pub epoch: i64,
    pub by_partition: BTreeMap<i32, i64>,
}

impl Positions {
    /// The position delivered in `partition` (0: nothing of it yet).
    pub fn of(&self, partition: i32) -> i64 {
        self.by_partition.get(&partition).copied().unwrap_or(0)
    }

    pub fn to_id(&self) -> String {
        let parts: Vec<String> = self
            .by_partition
            .iter()
            .map(|(p, position)| format!("{p}={position}"))
            .collect();
        format!("owner:{}:{}", self.epoch, parts.join(","))
    }

    pub fn parse(raw: &str) -> Result<Positions, ApiError> {
        let invalid = || ApiError::BadRequest {
            detail: "the feed cursor (Last-Event-ID or after) is not one this feed issued".into(),
        };
        let rest = raw.strip_prefix("owner:").ok_or_else(invalid)?;
        let (epoch, list) = rest.split_once(':').ok_or_else(invalid)?;
        let epoch: i64 = epoch.parse().map_err(|_| invalid())?;
        let mut by_partition = BTreeMap::new();
        for pair in list.split(',').filter(|p| !p.is_empty()) {
            let (p, position) = pair.split_once('=').ok_or_else(invalid)?;
            let p: i32 = p.parse().map_err(|_| invalid())?;
            let position: i64 = position.parse().map_err(|_| invalid())?;
            if p < 0 || position < 0 || by_partition.insert(p, position).is_some() {
                return Err(invalid());
            }
            if by_partition.len() > PARTITIONS_MAX {
                return Err(invalid());
            }
        }
        Ok(Positions {
            epoch,
            by_partition,
        })
    }
}

/// The account version an account feed's cursor names; `Err` when it names anything else.
pub fn account_version(raw: &str, account_id: &str) -> Result<i64, ApiError> {
    let token = crate::consistency::parse(raw)?;
    match token.target {
        crate::consistency::Target::Version(version)
            if token.aggregate_type == "account"
                && token.aggregate_id == account_id
                && version >= 0 =>
        {
            Ok(version)
        }
        _ => Err(ApiError::BadRequest {
            detail: format!("the feed cursor does not name a version of account {account_id}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_cursor_reads_back_as_written() {
        let positions = Positions {
            epoch: 16_384,
            by_partition: [(0, 12), (3, 7_000_000_000)].into_iter().collect(),
        };
        let id = positions.to_id();
        assert_eq!(id, "owner:16384:0=12,3=7000000000");
        assert_eq!(Positions::parse(&id).ok(), Some(positions));
        assert_eq!(
            Positions::parse("owner:5:")
                .map(|p| p.by_partition.len())
                .ok(),
            Some(0)
        );
    }

    #[test]
    fn hostile_owner_cursors_are_refused() {
        for raw in [
            "",
            "owner:",
            "owner:x:0=1",
            "owner:1:0=-1",
            "owner:1:-1=3",
            "owner:1:0=1,0=2",
            "owner:1:0=1;DROP",
            "owner:1:0=99999999999999999999",
            "account:a:1",
        ] {
            assert!(Positions::parse(raw).is_err(), "{raw:?} accepted");
        }
        let many: Vec<String> = (0..=PARTITIONS_MAX).map(|p| format!("{p}=1")).collect();
        assert!(Positions::parse(&format!("owner:1:{}", many.join(","))).is_err());
    }

    #[test]
    fn an_account_cursor_names_that_account_only() {
        assert_eq!(account_version("account:acc-1:7", "acc-1").ok(), Some(7));
        assert!(account_version("account:acc-2:7", "acc-1").is_err());
        assert!(account_version("transfer:acc-1:settled", "acc-1").is_err());
        assert!(account_version("account:acc-1:-3", "acc-1").is_err());
        assert!(account_version("hold:acc-1:7", "acc-1").is_err());
    }
}
