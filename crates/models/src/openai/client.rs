//! The `openai` backend: any OpenAI-compatible chat-completions server (vLLM, llama.cpp,
//! Ollama, a cloud API, or another machine's `joule serve`).
//!
//! Remote servers fail in ordinary ways: they rate-limit (429), fall over (5xx), hang, or cut a
//! stream. Every call therefore has a deadline, 429 and 5xx are retried with exponential
//! backoff and jitter (honouring `Retry-After`), and a cut stream is an error, never a hang or
//! a silently short answer.

use std::time::{Duration, Instant};

use serde::Serialize;

use joule_call::{
    Answer, Backend, Call, CallError, CallFuture, Cancel, Constraint, OnTokens, Site, ToolUse,
    Turn, backoff,
};

use super::wire::{
    ChatChunk, ChatMessage, ChatRequest, ChatResponse, Content, ErrorBody, FunctionCall,
    FunctionDef, JsonSchemaFormat, ResponseFormat, StreamOptions, Timings, Tool, ToolCall,
    ToolCallDelta, Usage,
};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: no answer within the {deadline_s:.1} s deadline")]
    Deadline { url: String, deadline_s: f64 },
    #[error("{url}: HTTP {status}: {message} (after {attempts} attempts)")]
    Status {
        url: String,
        status: u16,
        message: String,
        attempts: u32,
    },
    #[error("{url}: {message} (after {attempts} attempts)")]
    Transport {
        url: String,
        message: String,
        attempts: u32,
    },
    #[error("{url}: the stream ended before `[DONE]` after {received} characters")]
    Cut { url: String, received: usize },
    #[error("{url}: unexpected answer: {message}")]
    Protocol { url: String, message: String },
    #[error("the API key variable `{0}` is not set")]
    MissingKey(String),
}

impl HttpError {
    /// Whether trying the same call again may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Deadline { .. } | Self::Transport { .. } | Self::Cut { .. } => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Protocol { .. } | Self::MissingKey(_) => false,
        }
    }
}

/// How hard to try one call.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// The whole call, all attempts and waits included.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
            deadline: Duration::from_secs(120),
        }
    }
}

/// A finished remote completion and what it took.
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    pub text: String,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    /// Seconds from the successful attempt's request to its first content.
    pub ttft_s: f64,
    /// Seconds for the whole call, failed attempts and waits included.
    pub wall_s: f64,
    pub attempts: u32,
    /// Timings a `joule serve` peer reports about its own device.
    pub server: Option<Timings>,
    /// The functions the model called, arguments as the JSON text it wrote.
    pub tool_calls: Vec<ToolCall>,
}

pub struct OpenAiBackend {
    client: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
    policy: RetryPolicy,
}

enum Attempt {
    Done(Completion),
    Retry(HttpError, Option<Duration>),
    Fail(HttpError),
}

impl OpenAiBackend {
    /// `api_key` is the key itself, which never appears in a catalog, a log or a run record
    /// ([`api_key`] finds it from the variable the catalog names).
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        policy: RetryPolicy,
    ) -> Result<Self, HttpError> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("joule/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10).min(policy.deadline))
            .build()
            .map_err(|e| HttpError::Transport {
                url: base_url.to_string(),
                message: e.to_string(),
                attempts: 0,
            })?;
        Ok(Self {
            client,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            policy,
        })
    }

    /// Sends a chat completion, retrying transient failures within the deadline. With
    /// `request.stream`, `on_text` receives the answer as it arrives (an attempt cut mid-stream
    /// is not retried once text has been handed out: the caller decides).
    /// One chat completion, retried per the policy. Whatever the endpoint sends back (an error
    /// body, even the answer) has the API key blanked out, so a server that echoes it cannot
    /// get it into joule's logs, store, traces or reports.
    pub async fn chat(
        &self,
        request: &ChatRequest,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Completion, HttpError> {
        match self.chat_unredacted(request, on_text).await {
            Ok(mut c) => {
                c.text = self.redact(&c.text);
                Ok(c)
            }
            Err(e) => Err(self.redact_error(e)),
        }
    }

    fn redact(&self, text: &str) -> String {
        match &self.api_key {
            Some(key) if !key.is_empty() && text.contains(key.as_str()) => {
                text.replace(key.as_str(), "[redacted]")
            }
            _ => text.to_string(),
        }
    }

    fn redact_error(&self, e: HttpError) -> HttpError {
        match e {
            HttpError::Status {
                url,
                status,
                message,
                attempts,
            } => HttpError::Status {
                url: self.redact(&url),
                status,
                message: self.redact(&message),
                attempts,
            },
            HttpError::Transport {
                url,
                message,
                attempts,
            } => HttpError::Transport {
                url: self.redact(&url),
                message: self.redact(&message),
                attempts,
            },
            HttpError::Protocol { url, message } => HttpError::Protocol {
                url: self.redact(&url),
                message: self.redact(&message),
            },
            other => other,
        }
    }

    async fn chat_unredacted(
        &self,
        request: &ChatRequest,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Completion, HttpError> {
        let url = format!("{}/chat/completions", self.base_url);
        let started = Instant::now();
        let deadline = started + self.policy.deadline;
        let seed = started.elapsed().as_nanos() as u64 ^ (self as *const Self as u64);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HttpError::Deadline {
                    url,
                    deadline_s: self.policy.deadline.as_secs_f64(),
                });
            }
            let outcome =
                tokio::time::timeout(left, self.attempt(&url, request, on_text, attempt)).await;
            let (error, retry_after) = match outcome {
                Err(_) => (
                    HttpError::Deadline {
                        url: url.clone(),
                        deadline_s: self.policy.deadline.as_secs_f64(),
                    },
                    None,
                ),
                Ok(Attempt::Done(mut c)) => {
                    c.wall_s = started.elapsed().as_secs_f64();
                    c.attempts = attempt;
                    return Ok(c);
                }
                Ok(Attempt::Fail(e)) => return Err(e),
                Ok(Attempt::Retry(e, after)) => (e, after),
            };
            if attempt >= self.policy.attempts || matches!(error, HttpError::Deadline { .. }) {
                return Err(error);
            }
            let wait = retry_after.unwrap_or_else(|| {
                backoff(self.policy.base_delay, self.policy.max_delay, attempt, seed)
            });
            if Instant::now() + wait >= deadline {
                return Err(error);
            }
            let error_text = self.redact(&error.to_string());
            tracing::warn!(%url, attempt, wait_s = wait.as_secs_f64(), error = %error_text, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(
        &self,
        url: &str,
        request: &ChatRequest,
        on_text: &mut (dyn FnMut(&str) + Send),
        attempt: u32,
    ) -> Attempt {
        let sent = Instant::now();
        let mut call = self.client.post(url).json(request);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        let transport = |e: reqwest::Error| HttpError::Transport {
            url: url.to_string(),
            message: e.to_string(),
            attempts: attempt,
        };
        let mut response = match call.send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(transport(e), None),
        };
        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(300.0)));
            let body = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<ErrorBody>(&body)
                .map(|b| b.error.message)
                .unwrap_or_else(|_| body.chars().take(200).collect());
            let error = HttpError::Status {
                url: url.to_string(),
                status: status.as_u16(),
                message,
                attempts: attempt,
            };
            return if error.is_transient() {
                Attempt::Retry(error, retry_after)
            } else {
                Attempt::Fail(error)
            };
        }
        if !request.stream {
            let body = match response.bytes().await {
                Ok(b) => b,
                Err(e) => return Attempt::Retry(transport(e), None),
            };
            let parsed: ChatResponse = match serde_json::from_slice(&body) {
                Ok(p) => p,
                Err(e) => {
                    return Attempt::Fail(HttpError::Protocol {
                        url: url.to_string(),
                        message: format!("not a chat completion: {e}"),
                    });
                }
            };
            let Some(choice) = parsed.choices.into_iter().next() else {
                return Attempt::Fail(HttpError::Protocol {
                    url: url.to_string(),
                    message: "no choices".into(),
                });
            };
            let text = choice.message.text_content();
            on_text(&text);
            return Attempt::Done(Completion {
                text,
                finish_reason: choice.finish_reason,
                usage: Some(parsed.usage),
                ttft_s: sent.elapsed().as_secs_f64(),
                wall_s: 0.0,
                attempts: attempt,
                server: parsed.joule,
                tool_calls: choice.message.tool_calls.unwrap_or_default(),
            });
        }

        // Server-sent events: `data: {json}` lines, blank-line separated, ending `data: [DONE]`.
        let mut buffer = Vec::new();
        let mut text = String::new();
        let mut finish_reason = None;
        let mut usage = None;
        let mut ttft = None;
        let mut calls: Vec<ToolCall> = Vec::new();
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) if text.is_empty() => return Attempt::Retry(transport(e), None),
                Err(_) => break,
            };
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let Some(data) = line.trim_end().strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    return Attempt::Done(Completion {
                        text,
                        finish_reason,
                        usage,
                        ttft_s: ttft.unwrap_or_else(|| sent.elapsed().as_secs_f64()),
                        wall_s: 0.0,
                        attempts: attempt,
                        server: None,
                        tool_calls: calls,
                    });
                }
                let chunk: ChatChunk = match serde_json::from_str(data) {
                    Ok(c) => c,
                    Err(e) => {
                        return Attempt::Fail(HttpError::Protocol {
                            url: url.to_string(),
                            message: format!("bad stream event `{data:.80}`: {e}"),
                        });
                    }
                };
                if chunk.usage.is_some() {
                    usage = chunk.usage;
                }
                for choice in chunk.choices {
                    if let Some(piece) = choice.delta.content.filter(|p| !p.is_empty()) {
                        ttft.get_or_insert_with(|| sent.elapsed().as_secs_f64());
                        on_text(&piece);
                        text.push_str(&piece);
                    }
                    for delta in choice.delta.tool_calls.into_iter().flatten() {
                        ttft.get_or_insert_with(|| sent.elapsed().as_secs_f64());
                        absorb_call_delta(&mut calls, delta);
                    }
                    if choice.finish_reason.is_some() {
                        finish_reason = choice.finish_reason;
                    }
                }
            }
        }
        let cut = HttpError::Cut {
            url: url.to_string(),
            received: text.len(),
        };
        if text.is_empty() {
            Attempt::Retry(cut, None)
        } else {
            Attempt::Fail(cut)
        }
    }
}

/// The API key of an endpoint whose catalog entry names the variable `var`, looked up with
/// `lookup`; an endpoint on loopback may go without one (a local `joule serve` or
/// `llama-server` asks for none), any other must have it.
pub fn api_key(
    base_url: &str,
    var: Option<&str>,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, HttpError> {
    match var {
        Some(var) => match lookup(var) {
            Some(key) => Ok(Some(key)),
            None if is_loopback(base_url) => Ok(None),
            None => Err(HttpError::MissingKey(var.to_string())),
        },
        None => Ok(None),
    }
}

impl OpenAiBackend {
    /// One model call of a step, streamed (so a server that stalls or cuts the answer is
    /// caught as it happens) and with usage in the last event, for the cost.
    async fn llm(
        &self,
        call: &Call,
        cancel: &Cancel,
        on_tokens: &OnTokens,
    ) -> Result<Answer, CallError> {
        let Call::Llm(c) = call else {
            return Err(CallError::permanent("an endpoint was handed a tool call"));
        };
        let mut request = chat_request(c);
        request.stream_options = Some(StreamOptions {
            include_usage: true,
        });
        let mut pieces = 0;
        let mut count = |_: &str| {
            pieces += 1;
            on_tokens(pieces);
        };
        let completion = tokio::select! {
            r = self.chat(&request, &mut count) => r,
            _ = cancel.cancelled() => return Err(CallError::transient("cancelled")),
        }
        .map_err(|e| CallError {
            transient: e.is_transient(),
            message: e.to_string(),
        })?;
        let usage = completion.usage.as_ref();
        Ok(Answer {
            text: completion.text,
            tokens_in: usage.map_or(0, |u| u.prompt_tokens),
            tokens_out: usage.map_or(0, |u| u.completion_tokens),
            tokens_cached: usage
                .and_then(|u| u.prompt_tokens_details)
                .map_or(0, |d| d.cached_tokens),
            ttft_s: Some(completion.ttft_s),
            load_s: completion.server.as_ref().map_or(0.0, |t| t.load_s),
            tool_calls: tool_uses(completion.tool_calls),
            ..Answer::default()
        })
    }
}

impl Backend for OpenAiBackend {
    fn call<'a>(
        &'a self,
        _site: &'a Site,
        call: &'a Call,
        cancel: &'a Cancel,
        on_tokens: &'a OnTokens,
    ) -> CallFuture<'a> {
        Box::pin(self.llm(call, cancel, on_tokens))
    }
}

/// Adds one streamed piece of a tool call to the calls so far: the first piece of a call
/// names it, later ones append to its arguments' text.
fn absorb_call_delta(calls: &mut Vec<ToolCall>, delta: ToolCallDelta) {
    let i = delta.index as usize;
    while calls.len() <= i {
        calls.push(ToolCall {
            id: String::new(),
            kind: "function".into(),
            function: FunctionCall {
                name: String::new(),
                arguments: String::new(),
            },
        });
    }
    let call = &mut calls[i];
    if let Some(id) = delta.id {
        call.id = id;
    }
    if let Some(name) = delta.function.name {
        call.function.name.push_str(&name);
    }
    if let Some(arguments) = delta.function.arguments {
        call.function.arguments.push_str(&arguments);
    }
}

/// A step's call as an OpenAI chat request: the conversation so far, the functions offered,
/// and a JSON Schema answer as `response_format` (a closed set of words has no such form; the
/// executor checks it after).
fn chat_request(c: &joule_call::LlmCall) -> ChatRequest {
    let mut request = ChatRequest::user(&c.model, &c.prompt, c.max_tokens.into(), true);
    if let Some(system) = &c.system {
        request
            .messages
            .insert(0, ChatMessage::text("system", system.clone()));
    }
    for turn in &c.turns {
        request.messages.push(match turn {
            Turn::Assistant {
                content,
                tool_calls,
            } => ChatMessage {
                content: (!content.is_empty()).then(|| Content::Text(content.clone())),
                tool_calls: (!tool_calls.is_empty()).then(|| {
                    tool_calls
                        .iter()
                        .map(|t| ToolCall {
                            id: t.id.clone(),
                            kind: "function".into(),
                            function: FunctionCall {
                                name: t.name.clone(),
                                arguments: t.arguments.to_string(),
                            },
                        })
                        .collect()
                }),
                ..ChatMessage::text("assistant", "")
            },
            Turn::Tool { id, content } => ChatMessage {
                tool_call_id: Some(id.clone()),
                ..ChatMessage::text("tool", content.clone())
            },
        });
    }
    if !c.tools.is_empty() {
        request.tools = Some(
            c.tools
                .iter()
                .map(|f| Tool {
                    kind: "function".into(),
                    function: FunctionDef {
                        name: f.name.clone(),
                        description: f.description.clone(),
                        parameters: Some(f.parameters.clone()),
                        strict: None,
                    },
                })
                .collect(),
        );
    }
    if let Some(Constraint::JsonSchema(schema)) = &c.output {
        request.response_format = Some(ResponseFormat::JsonSchema {
            json_schema: JsonSchemaFormat {
                name: "output".into(),
                description: None,
                schema: Some(schema.clone()),
                strict: None,
            },
        });
    }
    request.temperature = Some(c.temperature);
    request.seed = Some(c.seed);
    request
}

/// A model's tool calls as the call vocabulary has them; arguments that are not JSON are
/// kept as a string, for the executor to refuse with the model's own words.
fn tool_uses(calls: Vec<ToolCall>) -> Vec<ToolUse> {
    calls
        .into_iter()
        .map(|c| ToolUse {
            arguments: serde_json::from_str(&c.function.arguments)
                .unwrap_or(serde_json::Value::String(c.function.arguments)),
            id: c.id,
            name: c.function.name,
        })
        .collect()
}

fn is_loopback(url: &str) -> bool {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .is_some_and(|h| h == "localhost" || h == "127.0.0.1" || h == "[::1]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_are_the_retryable_ones() {
        let status = |s| HttpError::Status {
            url: String::new(),
            status: s,
            message: String::new(),
            attempts: 1,
        };
        assert!(status(429).is_transient() && status(503).is_transient());
        assert!(!status(400).is_transient() && !status(404).is_transient());
        assert!(!HttpError::MissingKey("K".into()).is_transient());
    }
}
