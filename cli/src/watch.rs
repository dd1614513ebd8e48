//! `tally account watch --id ...`: an account's changes as they are applied (the change feed,
//! `GET /v1/accounts/{id}/feed`), reconnecting where it left off when the server ends the feed
//! or the connection drops.

use std::time::Duration;

use anyhow::{Context, bail};

/// Reconnections in a row that may fail before the command gives up.
const RECONNECTS_MAX: u32 = 10;
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// A feed sends a heartbeat every 15 s by default: silence far beyond that is a dead link.
const SILENCE_MAX: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Watch {
    pub account_id: String,
    /// Resume after this change (an event id or a command reply's consistency token).
    pub after: Option<String>,
    /// Stop after this many changes.
    pub count: Option<u64>,
}

/// Prints each change, one line each, until `count` changes (or forever).
#[allow(clippy::print_stdout)]
pub async fn run(
    watch: Watch,
    http: &crate::read::Http,
    connection: &crate::send::Connection,
    json: bool,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(connection.timeout_ms))
        .build()?;
    let url = format!(
        "{}/v1/accounts/{}/feed",
        http.base.trim_end_matches('/'),
        crate::account::encode(&watch.account_id)
    );
    let mut last_id = watch.after;
    let mut printed = 0u64;
    let mut failures = 0u32;
    loop {
        let mut request = client.get(&url).header("accept", "text/event-stream");
        if let Some(value) = crate::send::authorization(connection.token.as_deref()) {
            request = request.header("authorization", value);
        }
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        let outcome = async {
            let response = request
                .send()
                .await
                .with_context(|| format!("cannot reach the API at {}", http.base))?;
            let status = response.status();
            if !status.is_success() {
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                // A refusal is final: retrying cannot make it allowed.
                return Ok::<_, anyhow::Error>(Err(format!(
                    "{} {}: {}",
                    status.as_u16(),
                    body["code"].as_str().unwrap_or(""),
                    body["detail"].as_str().unwrap_or("no detail")
                )));
            }
            follow(response, &mut last_id, &mut printed, watch.count, json).await?;
            Ok(Ok(()))
        }
        .await;
        match outcome {
            Ok(Err(refused)) => bail!(refused),
            Ok(Ok(())) if watch.count.is_some_and(|n| printed >= n) => return Ok(()),
            Ok(Ok(())) => failures = 0,
            Err(error) => {
                failures += 1;
                if failures > RECONNECTS_MAX {
                    return Err(error.context(format!("{RECONNECTS_MAX} reconnections failed")));
                }
                eprintln!("feed interrupted ({error:#}); reconnecting");
            }
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// Reads one connection's events until it ends (or `count` changes are printed).
#[allow(clippy::print_stdout)]
async fn follow(
    mut response: reqwest::Response,
    last_id: &mut Option<String>,
    printed: &mut u64,
    count: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let mut buffer = String::new();
    loop {
        let chunk = tokio::time::timeout(SILENCE_MAX, response.chunk())
            .await
            .context("no heartbeat from the feed")??;
        let Some(chunk) = chunk else { return Ok(()) };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (event, id, data) = parse(&block);
            if let Some(id) = id {
                *last_id = Some(id);
            }
            match event.as_str() {
                "change" => {
                    print_change(&data, json);
                    *printed += 1;
                    if count.is_some_and(|n| *printed >= n) {
                        return Ok(());
                    }
                }
                "end" | "reset" if json => println!("{{\"{event}\": {data}}}"),
                "end" | "reset" => eprintln!("feed {event}: {data}"),
                _ => {}
            }
        }
    }
}

/// (event, id, data) of one SSE block; comments and retry lines ignored.
fn parse(block: &str) -> (String, Option<String>, String) {
    let (mut event, mut id, mut data) = (String::new(), None, String::new());
    for line in block.lines().filter(|l| !l.starts_with(':')) {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
        match field {
            "event" => event = value,
            "id" => id = Some(value),
            "data" => data.push_str(&value),
            _ => {}
        }
    }
    (event, id, data)
}

#[allow(clippy::print_stdout)]
fn print_change(data: &str, json: bool) {
    if json {
        println!("{data}");
        return;
    }
    let change: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
    let movement = match change.get("entry") {
        Some(entry) => format!(
            " {} {} ({})",
            if entry["direction"] == "debit" {
                "-"
            } else {
                "+"
            },
            entry["amount"],
            entry["reference"].as_str().unwrap_or("")
        ),
        None => String::new(),
    };
    let state = match change.get("account") {
        Some(account) => format!(
            " available {} held {} {}",
            account["available"],
            account["held"],
            account["status"].as_str().unwrap_or("")
        ),
        None => String::new(),
    };
    println!(
        "{} v{} balance {}{movement}{state}",
        change["account_id"].as_str().unwrap_or(""),
        change["version"],
        change["balance"]
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_reads_as_its_fields() {
        let (event, id, data) =
            parse(": keep-alive\nevent: change\nid: account:a:3\ndata: {\"v\":1}\n\n");
        assert_eq!(
            (event.as_str(), id.as_deref(), data.as_str()),
            ("change", Some("account:a:3"), "{\"v\":1}")
        );
    }
}
