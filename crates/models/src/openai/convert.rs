//! Between the wire format and local generation: what a chat request asks the local engine
//! for, and how a finished generation is reported back in OpenAI's terms.

use super::wire::{ChatRequest, Content, Stop, Timings, Usage};
use crate::local::{FinishReason, Generation, Message, Prompt, Request};

/// Answers are capped when the request gives no limit, so a runaway model cannot hold a
/// device forever.
pub const DEFAULT_MAX_TOKENS: u64 = 512;
const MAX_STOPS: usize = 4;

/// The local generation a chat request asks for, or what is wrong with it.
pub fn to_local(request: &ChatRequest) -> Result<Request, String> {
    if request.messages.is_empty() {
        return Err("`messages` must hold at least one message".into());
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err("only `n: 1` is supported".into());
    }
    let mut messages = Vec::with_capacity(request.messages.len());
    for (i, m) in request.messages.iter().enumerate() {
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
    let max_tokens = request
        .max_completion_tokens
        .or(request.max_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    if max_tokens == 0 {
        return Err("`max_tokens` must be at least 1".into());
    }
    let temperature = request.temperature.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(format!("`temperature` {temperature} is outside 0..2"));
    }
    if let Some(p) = request.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(format!("`top_p` {p} is outside (0, 1]"));
    }
    let stop = match &request.stop {
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
        top_p: request.top_p,
        seed: request.seed.unwrap_or(0),
        stop,
        ignore_eos: false,
        fit_context: request.max_completion_tokens.is_none() && request.max_tokens.is_none(),
        cancel: None,
    })
}

/// A finished generation's timings, as a `joule serve` peer reports them.
pub fn timings_of(g: &Generation, device: &str) -> Timings {
    Timings {
        device: device.to_string(),
        ttft_s: g.ttft_s,
        prefill_tokens_per_s: g.prefill_tokens_per_s,
        decode_tokens_per_s: g.decode_tokens_per_s,
        wall_s: g.wall_s,
        load_s: g.load_s,
        queue_s: g.queue_s,
    }
}

/// A finished generation's token counts.
pub fn usage_of(g: &Generation) -> Usage {
    Usage {
        prompt_tokens: g.prompt_tokens as u64,
        completion_tokens: g.completion_tokens as u64,
        total_tokens: (g.prompt_tokens + g.completion_tokens) as u64,
        prompt_tokens_details: Some(super::wire::PromptTokensDetails {
            cached_tokens: g.cached_prompt_tokens as u64,
        }),
    }
}

/// OpenAI's name for why a generation ended (a cancelled one ends as `stop`: the client
/// that cancelled it no longer reads it).
pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> Result<Request, String> {
        to_local(&serde_json::from_str::<ChatRequest>(json).unwrap())
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
