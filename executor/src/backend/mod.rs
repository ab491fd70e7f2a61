//! What executes a step. The runtime hands every model or tool call to one [`Backend`]; the
//! [`Router`] sends it to the `local` (candle), `openai` (HTTP) or `tool` (child process)
//! backend by the step's config, and the [`Recorded`] backend answers from a stored run, which
//! is how `joule replay` reproduces a run without calling a model.
//!
//! `value` steps are the fourth kind of step, but they never leave the scheduler: rendering a
//! template takes microseconds, and a round trip through a task would cost more than the work.

pub mod local;
pub mod openai;
pub mod tool;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use joule_planner::catalog::Catalog;
use serde::{Deserialize, Serialize};

use crate::runtime::Cancel;

/// One model call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlmCall {
    pub model: String,
    /// A local device (`cpu`, `cuda:0`) or an endpoint name.
    pub device: String,
    pub system: Option<String>,
    pub prompt: String,
    pub max_tokens: u32,
    pub temperature: f64,
    pub seed: u64,
}

/// One tool call: the catalog tool and its rendered arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolCall {
    pub tool: String,
    pub args: BTreeMap<String, String>,
    pub timeout_s: Option<f64>,
    /// Whether the policy gives this tool the network (the catalog must allow it too).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network: bool,
    /// Sandbox layers the policy requires; the call fails rather than run without one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sandbox: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Call {
    Llm(LlmCall),
    Tool(ToolCall),
}

impl Call {
    /// The device the call occupies (`host` for tools).
    pub fn device(&self) -> &str {
        match self {
            Call::Llm(c) => &c.device,
            Call::Tool(_) => "host",
        }
    }
}

/// Which step, element and attempt a call belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Site {
    pub step: String,
    pub index: Option<usize>,
    /// 1 for the first attempt, counting across fallback configs.
    pub attempt: u32,
}

/// What a call produced, with the figures the meters and the report need.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Answer {
    pub text: String,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub ttft_s: Option<f64>,
    /// Seconds this call spent loading its model (0 when resident).
    pub load_s: f64,
    /// CPU seconds of a tool's process, for its energy estimate.
    pub cpu_s: Option<f64>,
    /// The sandbox layers a tool's process ran under (the record of what was in force).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sandbox: Vec<crate::sandbox::Layer>,
    /// A tool's program and argv as started, and its exit status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    pub message: String,
    /// Whether the same call may succeed if tried again.
    pub transient: bool,
}

impl CallError {
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: false,
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: true,
        }
    }
}

pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<Answer, CallError>> + Send + 'a>>;

/// Told the number of tokens generated so far, as they come (for progress displays).
pub type OnTokens = Arc<dyn Fn(u64) + Send + Sync>;

/// Executes calls. Implementations must give up promptly once `cancel` fires.
pub trait Backend: Send + Sync {
    fn call<'a>(
        &'a self,
        site: &'a Site,
        call: &'a Call,
        cancel: &'a Cancel,
        on_tokens: &'a OnTokens,
    ) -> CallFuture<'a>;
}

/// Answers of earlier identical calls, for steps marked `cache: true`. `call` is the call as
/// JSON, exactly as recorded.
pub trait Cache: Send + Sync {
    fn lookup(&self, call: &serde_json::Value) -> Option<Answer>;
}

/// Exponential backoff with full jitter: a uniformly random wait in [0, base * 2^(attempt-1)],
/// capped at `max`. Spreads retries of many callers instead of synchronising them.
pub fn backoff(base: Duration, max: Duration, attempt: u32, seed: u64) -> Duration {
    let ceiling = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max);
    // splitmix64: jitter needs spread, not cryptographic randomness.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(u64::from(attempt) + 1));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ceiling.mul_f64((z >> 11) as f64 / (1u64 << 53) as f64)
}

/// The real backends, chosen per call by its device.
pub struct Router {
    catalog: Arc<Catalog>,
    /// Local inference, one backend per device id.
    local: HashMap<String, Arc<local::LocalBackend>>,
    endpoints: HashMap<String, openai::OpenAiBackend>,
    /// Where `path` arguments of tools are resolved: the workflow's directory.
    workspace: PathBuf,
}

impl Router {
    pub fn new(catalog: Arc<Catalog>, workspace: PathBuf) -> Self {
        Self {
            catalog,
            local: HashMap::new(),
            endpoints: HashMap::new(),
            workspace,
        }
    }

    pub fn with_local(mut self, backend: Arc<local::LocalBackend>) -> Self {
        self.local.insert(backend.device_id().to_string(), backend);
        self
    }

    pub fn with_endpoint(mut self, name: &str, backend: openai::OpenAiBackend) -> Self {
        self.endpoints.insert(name.to_string(), backend);
        self
    }

    async fn llm(
        &self,
        c: &LlmCall,
        cancel: &Cancel,
        on_tokens: &OnTokens,
    ) -> Result<Answer, CallError> {
        if let Some(local) = self.local.get(&c.device) {
            let local = local.clone();
            let mut messages = Vec::new();
            if let Some(system) = &c.system {
                messages.push(local::Message::new("system", system.clone()));
            }
            messages.push(local::Message::new("user", c.prompt.clone()));
            let mut request = local::Request::chat(messages, c.max_tokens as usize);
            request.temperature = c.temperature;
            request.seed = c.seed;
            let model = c.model.clone();
            let flag = cancel.clone();
            let progress = on_tokens.clone();
            let generation = tokio::task::spawn_blocking(move || {
                let mut pieces = 0;
                local.generate(&model, &request, &mut |_| {
                    pieces += 1;
                    progress(pieces);
                    if flag.is_cancelled() {
                        local::Flow::Stop
                    } else {
                        local::Flow::Continue
                    }
                })
            })
            .await
            .map_err(|e| CallError::permanent(format!("inference task failed: {e}")))?
            .map_err(|e| CallError::permanent(e.to_string()))?;
            if generation.finish_reason == local::FinishReason::Cancelled || cancel.is_cancelled() {
                return Err(CallError::transient("cancelled"));
            }
            return Ok(Answer {
                text: generation.text,
                tokens_in: generation.prompt_tokens as u64,
                tokens_out: generation.completion_tokens as u64,
                ttft_s: Some(generation.ttft_s),
                load_s: generation.load_s,
                cpu_s: None,
                sandbox: Vec::new(),
                command: Vec::new(),
                exit_code: None,
            });
        }
        if let Some(endpoint) = self.endpoints.get(&c.device) {
            // Streamed, so a server that stalls or cuts the answer is caught as it happens, and
            // with usage in the last event, for the cost.
            let mut request =
                crate::openai::ChatRequest::user(&c.model, &c.prompt, c.max_tokens.into(), true);
            request.stream_options = Some(crate::openai::StreamOptions {
                include_usage: true,
            });
            if let Some(system) = &c.system {
                request.messages.insert(
                    0,
                    crate::openai::ChatMessage {
                        role: "system".into(),
                        content: crate::openai::Content::Text(system.clone()),
                    },
                );
            }
            request.temperature = Some(c.temperature);
            request.seed = Some(c.seed);
            let mut pieces = 0;
            let mut count = |_: &str| {
                pieces += 1;
                on_tokens(pieces);
            };
            let completion = tokio::select! {
                r = endpoint.chat(&request, &mut count) => r,
                _ = cancel.cancelled() => return Err(CallError::transient("cancelled")),
            }
            .map_err(|e| CallError {
                transient: e.is_transient(),
                message: e.to_string(),
            })?;
            let usage = completion.usage.as_ref();
            return Ok(Answer {
                text: completion.text,
                tokens_in: usage.map_or(0, |u| u.prompt_tokens),
                tokens_out: usage.map_or(0, |u| u.completion_tokens),
                ttft_s: Some(completion.ttft_s),
                load_s: completion.server.as_ref().map_or(0.0, |t| t.load_s),
                cpu_s: None,
                sandbox: Vec::new(),
                command: Vec::new(),
                exit_code: None,
            });
        }
        Err(CallError::permanent(format!(
            "no backend for device `{}`: it is neither a local device of this joule nor a configured endpoint",
            c.device
        )))
    }

    async fn tool(&self, c: &ToolCall, cancel: &Cancel) -> Result<Answer, CallError> {
        let tool = self.catalog.tool(&c.tool).ok_or_else(|| {
            CallError::permanent(format!("tool `{}` is not in the catalog", c.tool))
        })?;
        let argv = tool::argv(tool, &c.args, &self.workspace)
            .map_err(|e| CallError::permanent(e.to_string()))?;
        let out = tool::run(
            tool,
            &argv,
            &tool::Constraints {
                network: c.network,
                require: c.sandbox.clone(),
            },
            c.timeout_s.map(Duration::from_secs_f64),
            cancel,
        )
        .await
        .map_err(|e| CallError {
            transient: e.is_transient(),
            message: e.to_string(),
        })?;
        Ok(Answer {
            text: out.stdout,
            cpu_s: Some(out.cpu_s),
            sandbox: out.layers,
            command: std::iter::once(tool.program.clone())
                .chain(argv.argv.iter().cloned())
                .collect(),
            exit_code: Some(out.exit_code),
            ..Answer::default()
        })
    }
}

impl Backend for Router {
    fn call<'a>(
        &'a self,
        _site: &'a Site,
        call: &'a Call,
        cancel: &'a Cancel,
        on_tokens: &'a OnTokens,
    ) -> CallFuture<'a> {
        Box::pin(async move {
            match call {
                Call::Llm(c) => self.llm(c, cancel, on_tokens).await,
                Call::Tool(c) => self.tool(c, cancel).await,
            }
        })
    }
}

/// Answers from a recorded run: what every attempt of every call site got (failures
/// included, so retries replay too), and the call that was sent, so a replay proves it sent
/// the same prompts.
pub struct Recorded {
    pub answers: Recording,
}

impl Recorded {
    /// The configs each step's attempts went to, in order (the planned one, then any
    /// fallback), so a replay sends every call where the run did.
    pub fn configs(&self) -> HashMap<String, Vec<crate::runtime::ConfigRef>> {
        let mut sites: Vec<(&Site, &serde_json::Value)> = self
            .answers
            .iter()
            .map(|(s, (call, _))| (s, call))
            .collect();
        sites.sort_by_key(|(s, _)| (s.step.clone(), s.index, s.attempt));
        let mut out: HashMap<String, Vec<crate::runtime::ConfigRef>> = HashMap::new();
        for (site, call) in sites {
            let Some(device) = call["device"].as_str() else {
                continue;
            };
            let config = crate::runtime::ConfigRef {
                model: call["model"].as_str().map(str::to_string),
                device: device.to_string(),
            };
            let tried = out.entry(site.step.clone()).or_default();
            if !tried.contains(&config) {
                tried.push(config);
            }
        }
        out
    }
}

/// Per attempt: the call as sent (JSON) and what came back.
pub type Recording = HashMap<Site, (serde_json::Value, Result<Answer, CallError>)>;

impl Backend for Recorded {
    fn call<'a>(
        &'a self,
        site: &'a Site,
        call: &'a Call,
        _cancel: &'a Cancel,
        _on_tokens: &'a OnTokens,
    ) -> CallFuture<'a> {
        Box::pin(async move {
            let Some((recorded, answer)) = self.answers.get(site) else {
                return Err(CallError::permanent(format!(
                    "the recorded run has no attempt {} of step `{}`{}",
                    site.attempt,
                    site.step,
                    site.index
                        .map(|i| format!(" element {i}"))
                        .unwrap_or_default()
                )));
            };
            if serde_json::to_value(call).ok().as_ref() != Some(recorded) {
                return Err(CallError::permanent(format!(
                    "replay diverged at step `{}` attempt {}: the call differs from the recorded one",
                    site.step, site.attempt
                )));
            }
            answer.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jittered_and_capped() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(1));
        for attempt in 1..10 {
            let ceiling = Duration::from_millis(100 << (attempt - 1)).min(max);
            let waits: Vec<Duration> = (0..50)
                .map(|seed| backoff(base, max, attempt, seed))
                .collect();
            assert!(waits.iter().all(|w| *w <= ceiling), "attempt {attempt}");
            let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
            assert!(distinct.len() > 40, "jitter spreads the waits");
        }
    }
}
