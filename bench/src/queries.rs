//! HTTP reads at C concurrency against the query-service: one account by id, and a page of the
//! account list.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::stats::{Latency, elapsed_us};

#[derive(Debug, Clone, Copy)]
pub enum Read {
    /// `GET /v1/accounts/{id}` over the scenario's accounts, round robin.
    Account,
    /// `GET /v1/accounts?limit=50`: a page of the list.
    ListPage,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct QueryRun {
    pub ok: u64,
    pub ok_per_s: f64,
    pub latency: Latency,
    pub errors: BTreeMap<String, u64>,
}

pub async fn closed_loop(
    http: &reqwest::Client,
    http_url: &str,
    token: &str,
    accounts: &[String],
    read: Read,
    clients: usize,
    seconds: u64,
) -> QueryRun {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients.max(1) {
        let (http, token, accounts) = (http.clone(), token.to_owned(), accounts.to_vec());
        let url = http_url.to_owned();
        tasks.spawn(async move {
            let (mut ok, mut latencies, mut errors) =
                (0u64, Vec::new(), BTreeMap::<String, u64>::new());
            let mut i = c;
            while Instant::now() < deadline {
                i += 1;
                let path = match read {
                    Read::Account => format!("{url}/v1/accounts/{}", accounts[i % accounts.len()]),
                    Read::ListPage => format!("{url}/v1/accounts?limit=50"),
                };
                let started = Instant::now();
                let outcome = http.get(path).bearer_auth(&token).send().await;
                let outcome = match outcome {
                    Ok(response) => {
                        let status = response.status();
                        // The body is part of the answer: read it all.
                        match response.bytes().await {
                            Ok(_) if status.is_success() => Ok(()),
                            Ok(_) => Err(format!("http {}", status.as_u16())),
                            Err(e) => Err(format!("transport: {e}")),
                        }
                    }
                    Err(e) => Err(format!("transport: {e}")),
                };
                latencies.push(elapsed_us(started));
                match outcome {
                    Ok(()) => ok += 1,
                    Err(code) => *errors.entry(code).or_default() += 1,
                }
            }
            (ok, latencies, errors)
        });
    }
    let (mut ok, mut latencies, mut errors) = (0, Vec::new(), BTreeMap::<String, u64>::new());
    while let Some(Ok((n, l, e))) = tasks.join_next().await {
        ok += n;
        latencies.extend(l);
        for (code, count) in e {
            *errors.entry(code).or_default() += count;
        }
    }
    QueryRun {
        ok,
        ok_per_s: ok as f64 / seconds as f64,
        latency: Latency::of(latencies),
        errors,
    }
}
