//! A batch of commands in one message (`tally.cmd.batch.submit`): each with its own command id
//! and its own reply, run one by one (`atomic: false`) or all or nothing (`atomic: true`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Most commands in one batch.
pub const BATCH_COMMANDS_MAX: usize = 1_000;
/// A batch's body may be this large (one command's is 64 KiB).
pub const BATCH_BODY_MAX_BYTES: usize = 1024 * 1024;

/// Submit up to 1,000 commands in one message. The reply lists one result per command, in
/// order (`{"results": [...]}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatch {
    /// All or nothing, in one database transaction: if any command is refused, none is
    /// written; the refused one gets its own error, every other `conflict`.
    #[serde(default)]
    pub atomic: bool,
    #[schemars(length(min = 1, max = BATCH_COMMANDS_MAX))]
    pub commands: Vec<BatchedCommand>,
}

/// One command of a batch: what its subject would name (`account.deposit`), its id, its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchedCommand {
    /// `<aggregate>.<command>` as in `tally.cmd.<aggregate>.<command>`.
    #[schemars(length(min = 3, max = 64), pattern(r"^[a-z_]+\.[a-z_]+$"))]
    pub command: String,
    pub command_id: Uuid,
    /// The command's body, as it would be sent alone.
    pub body: serde_json::Value,
}

/// The reply to a batch: one command reply per command, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BatchReply {
    pub results: Vec<crate::reply::CommandReply>,
}
