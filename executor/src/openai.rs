//! The OpenAI chat-completions wire format: what `joule serve` speaks and what the executor's
//! HTTP backend sends. Only the fields joule uses are typed; unknown ones are accepted and
//! ignored, as OpenAI-compatible servers do.

use serde::{Deserialize, Serialize};

use crate::backend::local::{FinishReason, Generation, Message, Prompt, Request};

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Content,
}

/// Message content: a string, or the newer list of typed parts (only text parts are read).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

impl Default for Content {
    fn default() -> Self {
        Self::Text(String::new())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl ChatRequest {
    /// A one-message request with everything else at the server's defaults.
    pub fn user(model: &str, text: &str, max_tokens: u64, stream: bool) -> Self {
        Self {
            model: model.into(),
            messages: vec![ChatMessage {
                role: "user".into(),
                content: Content::Text(text.into()),
            }],
            max_tokens: Some(max_tokens),
            max_completion_tokens: None,
            temperature: None,
            top_p: None,
            seed: None,
            stop: None,
            n: None,
            stream,
            stream_options: None,
        }
    }
}

/// Answers are capped when the request gives no limit, so a runaway model cannot hold a
/// device forever.
pub const DEFAULT_MAX_TOKENS: u64 = 512;
const MAX_STOPS: usize = 4;

impl ChatRequest {
    /// The local generation this request asks for, or what is wrong with it.
    pub fn to_local(&self) -> Result<Request, String> {
        if self.messages.is_empty() {
            return Err("`messages` must hold at least one message".into());
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err("only `n: 1` is supported".into());
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.iter().enumerate() {
            if !matches!(
                m.role.as_str(),
                "system" | "developer" | "user" | "assistant" | "tool"
            ) {
                return Err(format!(
                    "messages[{i}].role `{}` is not a chat role",
                    m.role
                ));
            }
            let content = match &m.content {
                Content::Text(t) => t.clone(),
                Content::Parts(parts) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => text.push_str(t),
                            (kind, _) => {
                                return Err(format!(
                                    "messages[{i}] has a `{kind}` part; only text is supported"
                                ));
                            }
                        }
                    }
                    text
                }
            };
            let role = if m.role == "developer" {
                "system"
            } else {
                &m.role
            };
            messages.push(Message::new(role, content));
        }
        let max_tokens = self
            .max_completion_tokens
            .or(self.max_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS);
        if max_tokens == 0 {
            return Err("`max_tokens` must be at least 1".into());
        }
        let temperature = self.temperature.unwrap_or(0.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(format!("`temperature` {temperature} is outside 0..2"));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(format!("`top_p` {p} is outside (0, 1]"));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOPS {
            return Err(format!("at most {MAX_STOPS} stop strings are allowed"));
        }
        Ok(Request {
            prompt: Prompt::Chat(messages),
            max_tokens: usize::try_from(max_tokens).unwrap_or(usize::MAX),
            temperature,
            top_p: self.top_p,
            seed: self.seed.unwrap_or(0),
            stop,
            ignore_eos: false,
            fit_context: self.max_completion_tokens.is_none() && self.max_tokens.is_none(),
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
    /// joule's own timings, which the executor reads to meter a step served over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joule: Option<Timings>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Choice {
    pub index: u32,
    pub message: ChatMessage,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Timings {
    pub device: String,
    pub ttft_s: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub wall_s: f64,
    pub load_s: f64,
    pub queue_s: f64,
}

impl Timings {
    pub fn of(g: &Generation, device: &str) -> Self {
        Self {
            device: device.to_string(),
            ttft_s: g.ttft_s,
            prefill_tokens_per_s: g.prefill_tokens_per_s,
            decode_tokens_per_s: g.decode_tokens_per_s,
            wall_s: g.wall_s,
            load_s: g.load_s,
            queue_s: g.queue_s,
        }
    }
}

impl Usage {
    pub fn of(g: &Generation) -> Self {
        Self {
            prompt_tokens: g.prompt_tokens as u64,
            completion_tokens: g.completion_tokens as u64,
            total_tokens: (g.prompt_tokens + g.completion_tokens) as u64,
        }
    }
}

pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
    }
}

/// One server-sent event of a streamed completion.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ErrorBody {
    pub fn new(kind: &str, code: &str, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                message: message.into(),
                kind: kind.into(),
                param: None,
                code: Some(code.into()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> Result<Request, String> {
        serde_json::from_str::<ChatRequest>(json)
            .unwrap()
            .to_local()
    }

    #[test]
    fn parts_and_limits_are_read() {
        let r = request(
            r#"{"model":"m","messages":[{"role":"developer","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],"max_completion_tokens":9,"stop":"\n","temperature":0.5,"unknown":1}"#,
        )
        .unwrap();
        let Prompt::Chat(messages) = &r.prompt else {
            panic!("a chat")
        };
        assert_eq!(messages[0], Message::new("system", "be brief"));
        assert_eq!(messages[1], Message::new("user", "hi there"));
        assert_eq!(
            (r.max_tokens, r.stop.as_slice(), r.temperature),
            (9, &["\n".to_string()][..], 0.5)
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        for (json, needle) in [
            (r#"{"model":"m","messages":[]}"#, "at least one message"),
            (
                r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#,
                "not a chat role",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#,
                "n: 1",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":7}"#,
                "temperature",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                "image_url",
            ),
        ] {
            let err = request(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
