//! The change feed (`/v1/accounts/{id}/feed`, `/v1/feed`): live, resumable without gap or
//! duplicate (on any instance), scoped like reads, and bounded.

mod bounds;
mod clients;
mod resume;
mod scope;

use std::time::Duration;

use serde_json::{Value, json};
use tests::TestApp;
use tests::client::accepted;

pub const WAIT: Duration = Duration::from_secs(15);

/// Opens an account and waits until the read model has it (a feed of an account it does not
/// have yet answers 404, as a read does).
pub async fn open(app: &TestApp, id: &str, owner: &str) {
    let reply = app
        .send(
            "account.open",
            json!({"account_id": id, "owner": owner, "currency": "EUR"}),
        )
        .await;
    accepted(&reply);
    let domain::CommandReply::Accepted {
        consistency_token, ..
    } = reply
    else {
        unreachable!("accepted above");
    };
    let read = app
        .http_get_with_token(&format!("/v1/accounts/{id}"), &consistency_token)
        .await;
    assert_eq!(read.status(), 200, "account {id} not in the read model");
}

pub async fn deposit(app: &TestApp, id: &str, amount: i64) -> String {
    match app
        .send(
            "account.deposit",
            json!({"account_id": id, "amount": amount, "reference": "feed"}),
        )
        .await
    {
        domain::CommandReply::Accepted {
            consistency_token, ..
        } => consistency_token,
        other => panic!("deposit refused: {other:?}"),
    }
}

/// (account, version, balance, entry amount) of a change event.
pub fn summary(event: &tests::sse::SseEvent) -> (String, i64, i64, Option<i64>) {
    let data: Value = event.json();
    (
        data["account_id"].as_str().unwrap_or_default().to_owned(),
        data["version"].as_i64().unwrap_or(-1),
        data["balance"].as_i64().unwrap_or(-1),
        data["entry"]["amount"].as_i64(),
    )
}
