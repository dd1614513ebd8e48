//! Reads over the query-service's HTTP API.

use anyhow::{Context, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct Http {
    /// Base URL of the query-service.
    #[arg(
        long = "api-url",
        env = "TALLY_API_URL",
        default_value = "http://127.0.0.1:8480",
        global = true
    )]
    pub base: String,
}

/// GETs `path`; returns the JSON body, or an error carrying the API's problem detail.
pub async fn get(
    http: &Http,
    path: &str,
    consistency_token: Option<&str>,
    connection: &crate::send::Connection,
) -> anyhow::Result<serde_json::Value> {
    let timeout_ms = connection.timeout_ms;
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(timeout_ms))
        .build()?;
    let mut request = client.get(format!("{}{path}", http.base.trim_end_matches('/')));
    if let Some(value) = crate::send::authorization(connection.token.as_deref()) {
        request = request.header("Authorization", value);
    }
    if let Some(token) = consistency_token {
        request = request
            .header("Tally-Consistency-Token", token)
            .header("Tally-Wait-Ms", "5000");
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the API at {}", http.base))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        let detail = body["detail"].as_str().unwrap_or("no detail");
        bail!(
            "{} {}: {detail}",
            status.as_u16(),
            body["code"].as_str().unwrap_or("")
        );
    }
    Ok(body)
}
