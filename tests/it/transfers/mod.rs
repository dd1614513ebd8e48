//! Transfers end to end, against the real servers: settled at once by the command-service (the
//! default), or step by step by the process manager through the normal command path.

mod at_once;
mod audit;
mod chaos;
mod cli;
mod flows;

use domain::CommandReply;
use serde_json::{Value, json};
use tests::TestApp;
use tests::client::accepted;
use uuid::Uuid;

/// The stack with transfers settled step by step by the process manager
/// (`--transfer-settlement steps`).
pub async fn spawn_steps() -> TestApp {
    let mut app = TestApp::spawn().await;
    app.stop_command_service().await;
    app.start_command_service(&["--transfer-settlement=steps"])
        .await;
    app
}

/// Opens `id` in `currency` and deposits `balance` into it.
/// Opens and funds an account, and waits until the accounts read model shows it: reads of a
/// transfer check its accounts' rows, which the accounts projection writes in its own time (on
/// other partitions than the transfer's).
pub async fn open(app: &TestApp, id: &str, currency: &str, balance: i64) {
    let mut reply = app
        .send(
            "account.open",
            json!({"account_id": id, "owner": "o", "currency": currency}),
        )
        .await;
    accepted(&reply);
    if balance > 0 {
        reply = app
            .send(
                "account.deposit",
                json!({"account_id": id, "amount": balance}),
            )
            .await;
        accepted(&reply);
    }
    projected(app, &reply).await;
}

/// Waits (bounded) until the read model has applied the accepted `reply`'s account command.
pub async fn projected(app: &TestApp, reply: &CommandReply) {
    let CommandReply::Accepted {
        aggregate_id,
        consistency_token,
        ..
    } = reply
    else {
        panic!("not accepted: {reply:?}");
    };
    let response = app
        .http
        .get(format!("{}/v1/accounts/{aggregate_id}", app.http_base))
        .header("Tally-Consistency-Token", consistency_token)
        .header("Tally-Wait-Ms", "5000")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "account {aggregate_id} not projected"
    );
}

pub async fn request(app: &TestApp, id: Uuid, from: &str, to: &str, amount: i64) -> CommandReply {
    app.send(
        "transfer.request",
        json!({"transfer_id": id, "from": from, "to": to, "amount": amount, "reference": "test"}),
    )
    .await
}

/// The transfer once settled, read with its request's consistency token.
pub async fn settled(app: &TestApp, reply: &CommandReply) -> Value {
    let CommandReply::Accepted {
        aggregate_id,
        consistency_token,
        ..
    } = reply
    else {
        panic!("not accepted: {reply:?}");
    };
    let response = app
        .http
        .get(format!("{}/v1/transfers/{aggregate_id}", app.http_base))
        .header("Tally-Consistency-Token", consistency_token)
        .header("Tally-Wait-Ms", "5000")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "transfer {aggregate_id} not settled"
    );
    response.json().await.unwrap()
}

/// An account's balance in the read model, after `token` (if given) was applied.
pub async fn balance(app: &TestApp, account: &str) -> i64 {
    let account: Value = app
        .http_get(&format!("/v1/accounts/{account}"))
        .await
        .json()
        .await
        .unwrap();
    account["balance"].as_i64().unwrap()
}

/// Waits until the accounts projection has caught up with `account`'s last event.
pub async fn caught_up(app: &TestApp, account: &str) {
    let version: i64 = sqlx::query_scalar(
        "SELECT max(sequence) FROM events WHERE aggregate_type = 'account' AND aggregate_id = $1",
    )
    .bind(account)
    .fetch_one(&app.db)
    .await
    .unwrap();
    let response = app
        .http
        .get(format!("{}/v1/accounts/{account}", app.http_base))
        .header(
            "Tally-Consistency-Token",
            format!("account:{account}:{version}"),
        )
        .header("Tally-Wait-Ms", "5000")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
