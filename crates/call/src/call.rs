//! What a step asks for: one model call or one tool call, and where in the run it belongs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One model call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// A call as sent, and as recorded: the run store keeps its JSON, and a replay checks that it
/// sends the same one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Call {
    Llm(LlmCall),
    Tool(ToolCall),
}

/// The device tool calls occupy: tools run as processes of this machine.
pub const HOST: &str = "host";

impl Call {
    /// The device the call occupies (`host` for tools).
    pub fn device(&self) -> &str {
        match self {
            Call::Llm(c) => &c.device,
            Call::Tool(_) => HOST,
        }
    }

    /// The (model, device) the call runs on.
    pub fn config(&self) -> ConfigRef {
        match self {
            Call::Llm(c) => ConfigRef {
                model: Some(c.model.clone()),
                device: c.device.clone(),
            },
            Call::Tool(_) => ConfigRef::host(),
        }
    }
}

/// The (model, device) a step or call ran on; tools and value steps run on `host`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfigRef {
    pub model: Option<String>,
    pub device: String,
}

impl ConfigRef {
    pub fn host() -> Self {
        Self {
            model: None,
            device: HOST.into(),
        }
    }
}

impl std::fmt::Display for ConfigRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}",
            self.model.as_deref().unwrap_or("-"),
            self.device
        )
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
