//! What a command needs to know besides its own aggregate, loaded before the domain decides:
//! whose account it is, the transfer a step belongs to, a transfer's accounts, and what the
//! accounts recorded of a transfer.

use domain::account::AccountServices;
use domain::transfer::{AccountFacts, StepsRecorded, Transfer, TransferCommand, TransferFacts};
use domain::{Account, AccountCommand, AccountStatus};

use super::{ExecuteError, Executor, from_sqlx};
use crate::incoming::Command;

impl Executor {
    /// Whether a token bound to `owner` may run `command`: the account it touches (for a
    /// transfer, the source) must be that owner's, or not exist yet. Owners never change, so
    /// this cannot race with the command.
    pub(super) async fn owns(&self, owner: &str, command: &Command) -> Result<bool, ExecuteError> {
        let account = match command {
            // Opening is checked on the body (`access::check_body`); a taken id is refused as
            // taken, whoever holds it.
            Command::Account(domain::AccountCommand::Open(_)) => return Ok(true),
            Command::Account(c) => c.account_id().to_owned(),
            Command::Transfer(TransferCommand::Request(r)) => r.from.clone(),
            // The process manager's steps need `admin`, which acts for every owner.
            Command::Transfer(_) => return Ok(true),
        };
        // An opened account's owner never changes, so the in-memory copy answers for it.
        if let Some(cached) = self.cached::<Account>(&account)
            && cached.aggregate.status != AccountStatus::Unopened
        {
            return Ok(cached.aggregate.owner == owner);
        }
        let state = self.load::<Account>(&account).await?.aggregate;
        Ok(state.status == AccountStatus::Unopened || state.owner == owner)
    }

    /// What an account command needs to know: for a transfer step, the transfer as recorded.
    pub(super) async fn account_services(
        &self,
        command: &AccountCommand,
    ) -> Result<AccountServices, ExecuteError> {
        let Some(transfer_id) = command.transfer_id() else {
            return Ok(AccountServices::default());
        };
        let transfer = self.load::<Transfer>(&transfer_id.to_string()).await?;
        Ok(AccountServices {
            transfer: Some(transfer.aggregate),
        })
    }

    /// What a transfer command needs to know: for a request, both accounts' currency and
    /// status; for a step's outcome, what the accounts recorded of this transfer.
    pub(super) async fn transfer_facts(
        &self,
        command: &TransferCommand,
    ) -> Result<TransferFacts, ExecuteError> {
        let TransferCommand::Request(request) = command else {
            let id = command.transfer_id();
            let transfer = self.load::<Transfer>(&id.to_string()).await?.aggregate;
            let recorded = self
                .repo
                .transfer_steps_recorded(id, &transfer.from, &transfer.to)
                .await
                .map_err(from_sqlx)?;
            return Ok(TransferFacts {
                recorded,
                ..TransferFacts::default()
            });
        };
        let facts = |account: Account| {
            (account.status != AccountStatus::Unopened).then_some(AccountFacts {
                currency: account.currency,
                status: account.status,
            })
        };
        Ok(TransferFacts {
            from: facts(self.load::<Account>(&request.from).await?.aggregate),
            to: facts(self.load::<Account>(&request.to).await?.aggregate),
            recorded: StepsRecorded::default(),
        })
    }
}
