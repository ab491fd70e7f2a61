//! Whether an endpoint answers: what `joule devices` shows for each catalog endpoint.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct EndpointState {
    pub name: String,
    pub base_url: String,
    /// Whether `GET {base_url}/models` answered within the timeout (any HTTP status counts).
    pub answers: bool,
    pub detail: String,
}

/// Asks `GET {base_url}/models` once.
pub async fn probe(name: &str, base_url: &str, timeout: Duration) -> EndpointState {
    let url = format!("{}/models", base_url.trim_end_matches('/'));
    let client = reqwest::Client::builder().timeout(timeout).build();
    let (answers, detail) = match client {
        Ok(c) => match c.get(&url).send().await {
            Ok(r) => (true, format!("HTTP {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => (
                false,
                format!("no answer within {:.0} s", timeout.as_secs_f64()),
            ),
            Err(e) => (false, chain(&e)),
        },
        Err(e) => (false, e.to_string()),
    };
    EndpointState {
        name: name.to_string(),
        base_url: base_url.to_string(),
        answers,
        detail,
    }
}

/// Probes several endpoints at once, answering in the order given.
pub async fn probe_all(endpoints: &[(String, String)], timeout: Duration) -> Vec<EndpointState> {
    let mut probes = tokio::task::JoinSet::new();
    for (i, (name, url)) in endpoints.iter().cloned().enumerate() {
        probes.spawn(async move { (i, probe(&name, &url, timeout).await) });
    }
    let mut out: Vec<(usize, EndpointState)> = Vec::new();
    while let Some(Ok(p)) = probes.join_next().await {
        out.push(p);
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, e)| e).collect()
}

/// An error with its causes (`connection refused` hides two levels down in reqwest's).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
