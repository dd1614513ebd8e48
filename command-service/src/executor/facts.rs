//! What a command needs to know besides its own aggregate, loaded before the domain decides:
//! the transfer a step belongs to, a transfer's accounts, and what the accounts recorded of a
//! transfer; and, for every command, the owner the sender's token is bound to. Whose account
//! it is is the domain's decision, made on the state the command is decided on: a check here,
//! before the aggregate's lock, passed for an id not yet opened, and the command was then
//! decided on the account someone else had opened meanwhile.

use domain::account::AccountServices;
use domain::transfer::{AccountFacts, StepsRecorded, Transfer, TransferCommand, TransferFacts};
use domain::{Account, AccountCommand};

use super::{ExecuteError, Executor, load};

/// What an account command needs to know: the sender's owner, and for a transfer step,
/// the transfer as recorded.
pub(super) async fn account_services(
    ex: &Executor,
    command: &AccountCommand,
    owner: Option<&str>,
) -> Result<AccountServices, ExecuteError> {
    let owner = owner.map(str::to_owned);
    let Some(transfer_id) = command.transfer_id() else {
        return Ok(AccountServices {
            transfer: None,
            owner,
        });
    };
    let transfer = load::load::<Transfer>(ex, &transfer_id.to_string()).await?;
    Ok(AccountServices {
        transfer: Some(transfer.aggregate),
        owner,
    })
}

/// What a transfer command needs to know: for a request, both accounts' currency, status
/// and owner, and the requester's owner; for a step's outcome, what the accounts recorded
/// of this transfer.
pub(super) async fn transfer_facts(
    ex: &Executor,
    command: &TransferCommand,
    owner: Option<&str>,
) -> Result<TransferFacts, ExecuteError> {
    let TransferCommand::Request(request) = command else {
        let id = command.transfer_id();
        let transfer = load::load::<Transfer>(ex, &id.to_string()).await?.aggregate;
        let recorded = ex
            .store
            .transfer_steps_recorded(id, &transfer.from, &transfer.to)
            .await?;
        return Ok(TransferFacts {
            recorded,
            ..TransferFacts::default()
        });
    };
    // Read fresh, after the request's lock: an account's owner never changes once it is
    // opened, so the owner seen here is the one the request is decided on.
    Ok(TransferFacts {
        from: AccountFacts::of(&load::load::<Account>(ex, &request.from).await?.aggregate),
        to: AccountFacts::of(&load::load::<Account>(ex, &request.to).await?.aggregate),
        recorded: StepsRecorded::default(),
        owner: owner.map(str::to_owned),
    })
}
