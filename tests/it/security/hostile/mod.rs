//! The attacker's view: a client holding nothing but the shared `tally-client` NATS password
//! (and, where said, a token of its own) tries to read, move or erase what is not its own, one
//! file per way in: reading others' traffic, hostile reply subjects, forbidden publishes,
//! streams, malformed requests, other actors' command ids, and racing an owner check.
//! Each test ends on a positive marker (a reply that arrived, a counter that moved) before it
//! checks that something did not happen, so none passes merely by being early.

mod ids;
mod malformed;
mod owners;
mod publishing;
mod reading;
mod replies;
mod streams;

use super::Secured;

/// Messages in `stream`, read as the command-service (which may read every stream's info).
async fn messages_in(secured: &Secured, stream: &str) -> u64 {
    let (service, _) = secured.connect("command-service").await;
    let mut stream = async_nats::jetstream::new(service)
        .get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("stream {stream} is gone: {e}"));
    stream.info().await.unwrap().state.messages
}

async fn count(app: &tests::TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.db).await.unwrap()
}
