//! The run API from the command line: `joule submit` and `joule runs --server` are clients of
//! a `joule serve`, with the key from `JOULE_API_KEY`. Errors come back as the server said them
//! (a workflow's line:column errors included), and a run is followed through its event stream.

use joule_app::AppError;
use joule_planner::text::escape_controls;
use serde_json::Value;

/// A run API at `base` (`http://host:port`, with or without `/v1`).
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Client {
    pub fn new(server: &str, key: Option<String>) -> Result<Self, AppError> {
        let base = server
            .trim_end_matches('/')
            .trim_end_matches("/v1")
            .to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(AppError::invalid(format!(
                "--server `{}`: give an http:// or https:// URL, e.g. http://127.0.0.1:8080",
                escape_controls(server)
            )));
        }
        Ok(Self {
            http: reqwest::Client::new(),
            base,
            key,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// Sends a request and reads its JSON answer; an error answer becomes an [`AppError`].
    pub async fn send(&self, r: reqwest::RequestBuilder) -> Result<Value, AppError> {
        let unreachable =
            |e: reqwest::Error| AppError::failed(format!("cannot reach {}: {e}", self.base));
        let response = r.send().await.map_err(unreachable)?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let e = &body["error"];
        let mut message = format!(
            "{} answered {}: {}",
            self.base,
            status.as_u16(),
            escape_controls(e["message"].as_str().unwrap_or("no message"))
        );
        for item in e["errors"].as_array().into_iter().flatten() {
            let line = match item {
                Value::String(s) => escape_controls(s).into_owned(),
                v => format!(
                    "{}:{}:{}: {}",
                    escape_controls(v["file"].as_str().unwrap_or("?")),
                    v["line"],
                    v["column"],
                    escape_controls(v["message"].as_str().unwrap_or(""))
                ),
            };
            message.push_str(&format!("\n  {line}"));
        }
        if status.as_u16() == 401 && self.key.is_none() {
            message.push_str("\n  set JOULE_API_KEY to a key `joule keys create` made");
        }
        Err(if status.is_client_error() {
            AppError::invalid(message)
        } else {
            AppError::failed(message)
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, AppError> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(
        &self,
        path: &str,
        body: &Value,
        key: Option<&str>,
    ) -> Result<Value, AppError> {
        let mut r = self.request(reqwest::Method::POST, path).json(body);
        if let Some(k) = key {
            r = r.header("Idempotency-Key", k);
        }
        self.send(r).await
    }

    /// Reads a run's event stream from after `after` until it ends, each event to `on_event`
    /// (its id and body). Reconnects with `Last-Event-ID` when the connection drops.
    pub async fn follow(
        &self,
        id: &str,
        mut on_event: impl FnMut(i64, &Value),
    ) -> Result<(), AppError> {
        let mut after = 0i64;
        for _ in 0..10 {
            let r = self
                .request(reqwest::Method::GET, &format!("/v1/runs/{id}/events"))
                .header("Last-Event-ID", after.to_string());
            let mut response = r
                .send()
                .await
                .map_err(|e| AppError::failed(format!("cannot reach {}: {e}", self.base)))?;
            if !response.status().is_success() {
                return self.get(&format!("/v1/runs/{id}")).await.map(|_| ());
            }
            let mut buffer = String::new();
            let mut ended = false;
            while let Ok(Some(chunk)) = response.chunk().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let frame: String = buffer.drain(..end + 2).collect();
                    let (mut n, mut data) = (None, String::new());
                    for line in frame.lines() {
                        if let Some(v) = line.strip_prefix("id:") {
                            n = v.trim().parse().ok();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.trim_start());
                        }
                    }
                    if let (Some(n), Ok(body)) = (n, serde_json::from_str::<Value>(&data)) {
                        after = n;
                        ended |= body["event"] == "run_ended";
                        on_event(n, &body);
                    }
                }
            }
            // The stream ends after the run's last event, or when the server stops.
            let run = self.get(&format!("/v1/runs/{id}")).await?;
            let status = run["status"].as_str().unwrap_or("");
            if ended || ["succeeded", "failed", "cancelled"].contains(&status) {
                return Ok(());
            }
        }
        Err(AppError::failed(format!(
            "the event stream of run {id} kept dropping; `joule runs show {id} --server {}` says where it is",
            self.base
        )))
    }
}

/// One event as a line for a terminal.
pub fn event_line(body: &Value) -> Option<String> {
    let s = |k: &str| escape_controls(body[k].as_str().unwrap_or("")).into_owned();
    Some(match body["event"].as_str()? {
        "run_started" => format!("run started ({})", s("workflow")),
        "step_ended" => format!(
            "step {} {} in {:.2} s, {:.1} J ({})",
            s("step"),
            if body["ok"] == true { "done" } else { "failed" },
            body["figures"]["latency_s"].as_f64().unwrap_or(0.0),
            body["figures"]["energy_j"].as_f64().unwrap_or(0.0),
            body["figures"]["energy_method"].as_str().unwrap_or("none"),
        ),
        "step_skipped" => format!("step {} skipped: {}", s("step"), s("reason")),
        "run_ended" => format!("run {}", s("status")),
        _ => return None,
    })
}
