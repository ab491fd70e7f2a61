//! Between the wire format and local generation: what a chat request asks the local engine
//! for, and how a finished generation is reported back in OpenAI's terms.

use serde_json::Value;

use super::wire::{
    ChatMessage, ChatRequest, ChoiceLogprobs, CompletionRequest, Content, FunctionCall, PromptText,
    ResponseFormat, Stop, Timings, TokenLogprobs, ToolCall, ToolChoice, TopLogprob, Usage,
};
use crate::local::chat::{CalledFunction, MessageToolCall};
use crate::local::tools::{self, Choice, Function};
use crate::local::{FinishReason, Generation, Grammar, Message, Prompt, Request};

/// Answers are capped when the request gives no limit, so a runaway model cannot hold a
/// device forever.
pub const DEFAULT_MAX_TOKENS: u64 = 512;
const MAX_STOPS: usize = 4;

/// Why a request cannot be served as asked, and which parameter it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub param: Option<String>,
    /// The parameter is one joule does not serve (rather than a bad value of one it does), so a
    /// client can tell "leave it out" from "fix it".
    pub unsupported: bool,
}

impl Refusal {
    /// A bad value of a parameter joule serves.
    fn new(param: &str, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            param: Some(param.to_string()),
            unsupported: false,
        }
    }

    /// A parameter (or a value of one) joule does not serve.
    fn unsupported(param: &str, message: impl Into<String>) -> Self {
        Self {
            unsupported: true,
            ..Self::new(param, message)
        }
    }
}

impl From<String> for Refusal {
    fn from(message: String) -> Self {
        Self {
            message,
            param: None,
            unsupported: false,
        }
    }
}

/// Parameters joule accepts but that change nothing here, when they ask for nothing: an end
/// user's id, or a penalty of zero. Any other value of these, and any parameter not typed in
/// [`ChatRequest`], is refused by name.
fn neutral(key: &str, value: &Value) -> bool {
    match key {
        "user" => true,
        "frequency_penalty" | "presence_penalty" => value.as_f64() == Some(0.0),
        "logit_bias" | "metadata" => value.as_object().is_some_and(|o| o.is_empty()),
        "store" => value == &Value::Bool(false),
        "service_tier" => matches!(value.as_str(), Some("auto" | "default")),
        _ => false,
    }
}

/// Refuses what a request asks for that joule would not honour (instead of ignoring it).
pub fn refuse_unsupported(extra: &serde_json::Map<String, Value>) -> Result<(), Refusal> {
    for (key, value) in extra {
        if value.is_null() || neutral(key, value) {
            continue;
        }
        return Err(Refusal::unsupported(
            key,
            format!(
                "`{key}` is not supported by joule serve (not with this value); leave it out (the README lists the parameters joule serves)"
            ),
        ));
    }
    Ok(())
}

/// What a chat request's tools ask of the model: the functions offered, how they must be
/// called, whether several calls may come at once.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolUse {
    pub functions: Vec<Function>,
    pub choice: Choice,
    pub parallel: bool,
}

/// The request's tool use, or `None` when it offers none.
pub fn tool_use(request: &ChatRequest) -> Result<Option<ToolUse>, Refusal> {
    let tools = request.tools.as_deref().unwrap_or_default();
    let none = matches!(&request.tool_choice, Some(ToolChoice::Mode(m)) if m == "none");
    if tools.is_empty() && (request.tool_choice.is_none() || none) {
        return Ok(None);
    }
    let choice = match &request.tool_choice {
        None => Choice::Auto,
        Some(ToolChoice::Mode(mode)) => match mode.as_str() {
            "none" => Choice::None,
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            other => {
                return Err(Refusal::new(
                    "tool_choice",
                    format!(
                        "`tool_choice` `{other}` is not one of none, auto, required, or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"
                    ),
                ));
            }
        },
        Some(ToolChoice::Named { function, .. }) => Choice::Named(function.name.clone()),
    };
    if tools.is_empty() {
        return Err(Refusal::new(
            "tool_choice",
            "`tool_choice` asks for a tool call, but the request offers no `tools`",
        ));
    }
    let mut functions = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err(Refusal::new(
                "tools",
                format!(
                    "tools[{i}] is a `{}` tool; only `function` tools are supported",
                    t.kind
                ),
            ));
        }
        let name = &t.function.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(Refusal::new(
                "tools",
                format!("tools[{i}].function.name {name:?} must be letters, digits, `_` or `-`"),
            ));
        }
        if functions.iter().any(|f: &Function| &f.name == name) {
            return Err(Refusal::new(
                "tools",
                format!("tools[{i}]: the function `{name}` is offered twice"),
            ));
        }
        let parameters = t.function.parameters.clone().unwrap_or(Value::Null);
        if !(parameters.is_null() || parameters.is_object()) {
            return Err(Refusal::new(
                "tools",
                format!("tools[{i}].function.parameters must be a JSON Schema object"),
            ));
        }
        functions.push(Function {
            name: name.clone(),
            parameters,
        });
    }
    if let Choice::Named(name) = &choice
        && !functions.iter().any(|f| &f.name == name)
    {
        return Err(Refusal::new(
            "tool_choice",
            format!("`tool_choice` names `{name}`, which is not among the request's tools"),
        ));
    }
    Ok(Some(ToolUse {
        functions,
        choice,
        parallel: request.parallel_tool_calls.unwrap_or(true),
    }))
}

/// The grammar `response_format` asks for, if any.
fn response_grammar(request: &ChatRequest) -> Result<Option<Grammar>, Refusal> {
    Ok(match &request.response_format {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(Grammar::json_object()),
        Some(ResponseFormat::JsonSchema { json_schema }) => match &json_schema.schema {
            Some(schema) if schema.is_object() => Some(Grammar::json_schema(schema)),
            Some(_) => {
                return Err(Refusal::new(
                    "response_format",
                    "`response_format.json_schema.schema` must be a JSON Schema object",
                ));
            }
            None => Some(Grammar::json_object()),
        },
    })
}

/// A wire message as the local chat template reads it.
fn local_message(i: usize, m: &ChatMessage) -> Result<Message, Refusal> {
    if !matches!(
        m.role.as_str(),
        "system" | "developer" | "user" | "assistant" | "tool"
    ) {
        return Err(Refusal::new(
            "messages",
            format!("messages[{i}].role `{}` is not a chat role", m.role),
        ));
    }
    let content = match &m.content {
        None if m.role == "assistant" => String::new(),
        None => {
            return Err(Refusal::new(
                "messages",
                format!(
                    "messages[{i}] ({}) has no content; only an assistant turn that calls tools may leave it null",
                    m.role
                ),
            ));
        }
        Some(Content::Text(t)) => t.clone(),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for p in parts {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(Refusal::new(
                            "messages",
                            format!("messages[{i}] has a `{kind}` part; only text is supported"),
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
    let mut message = Message::new(role, content);
    for (j, call) in m.tool_calls.iter().flatten().enumerate() {
        if m.role != "assistant" {
            return Err(Refusal::new(
                "messages",
                format!(
                    "messages[{i}] is a {} turn with tool_calls; only assistant turns call tools",
                    m.role
                ),
            ));
        }
        let arguments = serde_json::from_str::<Value>(&call.function.arguments).map_err(|e| {
            Refusal::new(
                "messages",
                format!("messages[{i}].tool_calls[{j}].function.arguments is not JSON: {e}"),
            )
        })?;
        message.tool_calls.push(MessageToolCall {
            id: call.id.clone(),
            kind: "function".into(),
            function: CalledFunction {
                name: call.function.name.clone(),
                arguments,
            },
        });
    }
    if m.role == "tool" {
        message.tool_call_id = m.tool_call_id.clone();
        message.name = m.name.clone();
    }
    Ok(message)
}

/// The local generation a chat request asks for, or what is wrong with it (naming the
/// parameter).
pub fn to_local(request: &ChatRequest) -> Result<Request, Refusal> {
    refuse_unsupported(&request.extra)?;
    if request.messages.is_empty() {
        return Err(Refusal::new(
            "messages",
            "`messages` must hold at least one message",
        ));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(Refusal::unsupported("n", "only `n: 1` is supported"));
    }
    let logprobs = chat_logprobs(request)?;
    let messages = request
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| local_message(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let limits = Limits::read(
        request.max_completion_tokens.or(request.max_tokens),
        DEFAULT_MAX_TOKENS,
        request.temperature,
        request.top_p,
        request.stop.as_ref(),
    )?;
    let tool_use = tool_use(request)?;
    let format = response_grammar(request)?;
    // With tools, `response_format` shapes the reply a model gives instead of calling one.
    let grammar = match (&tool_use, format) {
        (Some(t), format) => Some(tools::grammar(
            &t.functions,
            &t.choice,
            t.parallel,
            format.as_ref(),
        )),
        (None, format) => format,
    };
    let offered = match &tool_use {
        Some(_) => request
            .tools
            .iter()
            .flatten()
            .map(|t| serde_json::to_value(t).unwrap_or(Value::Null))
            .collect(),
        None => Vec::new(),
    };
    Ok(Request {
        tools: offered,
        grammar,
        logprobs,
        ..limits.request(Prompt::Chat(messages), request.seed)
    })
}

/// The most alternatives a token's log-probabilities list: OpenAI's limits.
const MAX_TOP_LOGPROBS: u32 = 20;
const MAX_COMPLETION_LOGPROBS: u32 = 5;

/// How many alternatives per token a chat request wants log-probabilities of, if any.
fn chat_logprobs(request: &ChatRequest) -> Result<Option<usize>, Refusal> {
    let wanted = request.logprobs == Some(true);
    match request.top_logprobs {
        Some(n) if n > MAX_TOP_LOGPROBS => {
            return Err(Refusal::new(
                "top_logprobs",
                format!("`top_logprobs` {n} is outside 0..{MAX_TOP_LOGPROBS}"),
            ));
        }
        Some(n) if n > 0 && !wanted => {
            return Err(Refusal::new(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ));
        }
        _ => {}
    }
    if wanted && request.stream {
        return Err(Refusal::unsupported(
            "logprobs",
            "`logprobs` with `stream: true` is not supported yet; ask without streaming",
        ));
    }
    Ok(wanted.then(|| request.top_logprobs.unwrap_or(0) as usize))
}

/// A chat answer's log-probabilities in OpenAI's form, when they were asked for.
pub fn chat_logprobs_of(request: &ChatRequest, g: &Generation) -> Option<ChoiceLogprobs> {
    (request.logprobs == Some(true)).then(|| ChoiceLogprobs {
        content: g
            .logprobs
            .iter()
            .map(|t| TokenLogprobs {
                token: t.text.clone(),
                logprob: t.logprob,
                bytes: t.text.as_bytes().to_vec(),
                top_logprobs: t
                    .top
                    .iter()
                    .map(|a| TopLogprob {
                        token: a.text.clone(),
                        logprob: a.logprob,
                        bytes: a.text.as_bytes().to_vec(),
                    })
                    .collect(),
            })
            .collect(),
    })
}

/// A text completion's log-probabilities in the legacy form, when they were asked for.
pub fn completion_logprobs_of(request: &CompletionRequest, g: &Generation) -> Option<Value> {
    request.logprobs?;
    let mut offset = 0;
    let mut offsets = Vec::with_capacity(g.logprobs.len());
    for t in &g.logprobs {
        offsets.push(offset);
        offset += t.text.len();
    }
    Some(serde_json::json!({
        "tokens": g.logprobs.iter().map(|t| &t.text).collect::<Vec<_>>(),
        "token_logprobs": g.logprobs.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": g.logprobs.iter().map(|t| {
            t.top.iter().map(|a| (a.text.clone(), Value::from(a.logprob))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    }))
}

/// The sampling limits chat and text completions share, checked.
struct Limits {
    max_tokens: Option<u64>,
    default_max_tokens: u64,
    temperature: f64,
    top_p: Option<f64>,
    stop: Vec<String>,
}

impl Limits {
    fn read(
        max_tokens: Option<u64>,
        default_max_tokens: u64,
        temperature: Option<f64>,
        top_p: Option<f64>,
        stop: Option<&Stop>,
    ) -> Result<Self, Refusal> {
        if max_tokens == Some(0) {
            return Err(Refusal::new(
                "max_tokens",
                "`max_tokens` must be at least 1",
            ));
        }
        let temperature = temperature.unwrap_or(0.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(Refusal::new(
                "temperature",
                format!("`temperature` {temperature} is outside 0..2"),
            ));
        }
        if let Some(p) = top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(Refusal::new(
                "top_p",
                format!("`top_p` {p} is outside (0, 1]"),
            ));
        }
        let stop = match stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOPS {
            return Err(Refusal::new(
                "stop",
                format!("at most {MAX_STOPS} stop strings are allowed"),
            ));
        }
        Ok(Self {
            max_tokens,
            default_max_tokens,
            temperature,
            top_p,
            stop,
        })
    }

    fn request(self, prompt: Prompt, seed: Option<u64>) -> Request {
        Request {
            prompt,
            max_tokens: usize::try_from(self.max_tokens.unwrap_or(self.default_max_tokens))
                .unwrap_or(usize::MAX),
            temperature: self.temperature,
            top_p: self.top_p,
            seed: seed.unwrap_or(0),
            stop: self.stop,
            ignore_eos: false,
            fit_context: self.max_tokens.is_none(),
            tools: Vec::new(),
            grammar: None,
            logprobs: None,
            cancel: None,
        }
    }
}

/// OpenAI's default length of a text completion.
pub const DEFAULT_COMPLETION_TOKENS: u64 = 16;

/// The local generation a text completion asks for (raw prompt text, no chat template).
pub fn completion_to_local(request: &CompletionRequest) -> Result<Request, Refusal> {
    refuse_unsupported_completion(&request.extra)?;
    if request.n.is_some_and(|n| n != 1) {
        return Err(Refusal::unsupported("n", "only `n: 1` is supported"));
    }
    let prompt = match &request.prompt {
        PromptText::One(p) => p.clone(),
        PromptText::Many(list) if list.len() == 1 => list[0].clone(),
        PromptText::Many(_) => {
            return Err(Refusal::new(
                "prompt",
                "`prompt` must be one string (or a list of one); send one request per prompt",
            ));
        }
    };
    if prompt.is_empty() {
        return Err(Refusal::new("prompt", "`prompt` is empty"));
    }
    let limits = Limits::read(
        request.max_tokens,
        DEFAULT_COMPLETION_TOKENS,
        request.temperature,
        request.top_p,
        request.stop.as_ref(),
    )?;
    match request.logprobs {
        Some(n) if n > MAX_COMPLETION_LOGPROBS => {
            return Err(Refusal::new(
                "logprobs",
                format!("`logprobs` {n} is outside 0..{MAX_COMPLETION_LOGPROBS}"),
            ));
        }
        Some(_) if request.stream => {
            return Err(Refusal::unsupported(
                "logprobs",
                "`logprobs` with `stream: true` is not supported yet; ask without streaming",
            ));
        }
        _ => {}
    }
    Ok(Request {
        logprobs: request.logprobs.map(|n| n as usize),
        ..limits.request(Prompt::Text(prompt), request.seed)
    })
}

/// A text completion's extra parameters: those that ask for nothing pass (`echo: false`,
/// `best_of: 1`), the rest are refused by name.
fn refuse_unsupported_completion(extra: &serde_json::Map<String, Value>) -> Result<(), Refusal> {
    let asks_nothing = |key: &str, value: &Value| match key {
        "echo" => value == &Value::Bool(false),
        "best_of" => value.as_u64() == Some(1),
        _ => false,
    };
    let rest: serde_json::Map<String, Value> = extra
        .iter()
        .filter(|(k, v)| !asks_nothing(k, v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    refuse_unsupported(&rest)
}

/// A finished answer in OpenAI's terms: its text and the calls it made (ids derived from the
/// completion's id, so they are unique per response and stable in a replay).
pub fn answer_of(
    text: &str,
    tool_use: bool,
    completion_id: &str,
) -> (Option<String>, Vec<ToolCall>) {
    if !tool_use {
        return (Some(text.to_string()), Vec::new());
    }
    let (content, calls) = tools::parse(text);
    let calls = calls
        .into_iter()
        .enumerate()
        .map(|(i, c)| ToolCall {
            id: format!("call_{}_{i}", completion_id.trim_start_matches("chatcmpl-")),
            kind: "function".into(),
            function: FunctionCall {
                name: c.name,
                arguments: c.arguments.to_string(),
            },
        })
        .collect();
    (content, calls)
}

/// Whether a model free to answer (`tool_choice` auto) asked only for calls the conversation
/// already holds results of: the same function with the same arguments. Small models do this
/// turn after turn (Qwen2.5-Coder-0.5B re-calls a tool whatever its result says), and an agent
/// loop then runs until its recursion limit. `joule serve` answers such a turn again without
/// tools (see [`answer_instead`]); a call with new arguments is never touched.
pub fn repeats_answered(request: &ChatRequest, calls: &[ToolCall]) -> bool {
    let auto = request.tool_choice.is_none()
        || matches!(&request.tool_choice, Some(ToolChoice::Mode(m)) if m == "auto");
    if !auto || calls.is_empty() {
        return false;
    }
    let answered: Vec<(&str, Value)> = request
        .messages
        .iter()
        .filter(|m| m.role == "assistant")
        .flat_map(|m| m.tool_calls.iter().flatten())
        .filter(|c| {
            request
                .messages
                .iter()
                .any(|m| m.role == "tool" && m.tool_call_id.as_deref() == Some(c.id.as_str()))
        })
        .map(|c| {
            (
                c.function.name.as_str(),
                arguments_of(&c.function.arguments),
            )
        })
        .collect();
    calls.iter().all(|c| {
        let args = arguments_of(&c.function.arguments);
        answered
            .iter()
            .any(|(name, a)| *name == c.function.name && *a == args)
    })
}

/// Arguments as JSON, so `{"a":1}` and `{ "a": 1 }` are the same call.
fn arguments_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// The request as it would be with `tool_choice: none`: the answer a model gives from the
/// results it already has.
pub fn answer_instead(request: &ChatRequest) -> Result<Request, Refusal> {
    let mut plain = request.clone();
    plain.tool_choice = Some(ToolChoice::Mode("none".into()));
    to_local(&plain)
}

/// Whether the answer to `request` may hold tool calls (it offers tools, and not with
/// `tool_choice: none`): such an answer is read whole and parsed for calls.
pub fn may_call(request: &ChatRequest) -> bool {
    matches!(tool_use(request), Ok(Some(t)) if t.choice != Choice::None)
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
        to_local(&serde_json::from_str::<ChatRequest>(json).unwrap()).map_err(|r| r.message)
    }

    #[test]
    fn parts_and_limits_are_read() {
        let r = request(
            r#"{"model":"m","messages":[{"role":"developer","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],"max_completion_tokens":9,"stop":"\n","temperature":0.5,"user":"u"}"#,
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

    #[test]
    fn a_tool_round_trip_is_read() {
        let r = request(
            r#"{"model":"m","messages":[{"role":"user","content":"2+3?"},{"role":"assistant","content":null,"tool_calls":[{"id":"c0","type":"function","function":{"name":"add","arguments":"{\"a\":2,\"b\":3}"}}]},{"role":"tool","tool_call_id":"c0","content":"5"}],"tools":[{"type":"function","function":{"name":"add","parameters":{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"}}}}}]}"#,
        )
        .unwrap();
        let Prompt::Chat(messages) = &r.prompt else {
            panic!("a chat")
        };
        assert_eq!(messages[1].content, "");
        assert_eq!(
            messages[1].tool_calls[0].function.arguments,
            serde_json::json!({"a": 2, "b": 3})
        );
        assert_eq!(messages[2].tool_call_id.as_deref(), Some("c0"));
        assert_eq!(r.tools.len(), 1);
        let grammar = r.grammar.expect("tool calls are constrained");
        assert!(
            grammar.lark.contains("REPLY"),
            "auto may reply: {}",
            grammar.lark
        );
    }

    #[test]
    fn unsupported_parameters_are_refused_by_name() {
        let base = r#"{"model":"m","messages":[{"role":"user","content":"x"}]"#;
        for (tail, param) in [
            (r#","presence_penalty":0.5}"#, "presence_penalty"),
            (r#","logprobs":true,"stream":true}"#, "logprobs"),
            (r#","top_logprobs":3}"#, "top_logprobs"),
            (r#","logprobs":true,"top_logprobs":21}"#, "top_logprobs"),
            (r#","modalities":["audio"]}"#, "modalities"),
            (r#","tool_choice":"required"}"#, "tool_choice"),
            (
                r#","tools":[{"type":"function","function":{"name":"a"}}],"tool_choice":{"type":"function","function":{"name":"b"}}}"#,
                "tool_choice",
            ),
            (
                r#","response_format":{"type":"json_schema","json_schema":{"name":"x","schema":3}}}"#,
                "response_format",
            ),
        ] {
            let json = format!("{base}{tail}");
            let refusal =
                to_local(&serde_json::from_str::<ChatRequest>(&json).unwrap()).unwrap_err();
            assert_eq!(
                refusal.param.as_deref(),
                Some(param),
                "{json}: {}",
                refusal.message
            );
        }
        // Neutral values and nulls ask for nothing and pass.
        let json = format!(
            r#"{base},"presence_penalty":0,"user":"u1","logit_bias":null,"store":false,"logprobs":false}}"#
        );
        let r = to_local(&serde_json::from_str::<ChatRequest>(&json).unwrap()).unwrap();
        assert_eq!(r.logprobs, None);
        let json = format!(r#"{base},"logprobs":true,"top_logprobs":3}}"#);
        let r = to_local(&serde_json::from_str::<ChatRequest>(&json).unwrap()).unwrap();
        assert_eq!(r.logprobs, Some(3));
    }

    #[test]
    fn response_format_becomes_a_grammar_and_a_null_user_turn_is_refused() {
        let r = request(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"p","schema":{"type":"object","properties":{"a":{"type":"integer"}}}}}}"#,
        )
        .unwrap();
        let grammar = r.grammar.expect("a grammar");
        assert!(grammar.lark.starts_with("start: %json"), "{}", grammar.lark);
        let err =
            request(r#"{"model":"m","messages":[{"role":"user","content":null}]}"#).unwrap_err();
        assert!(err.contains("no content"), "{err}");
    }
}
