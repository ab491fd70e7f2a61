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
    /// The conversation after the prompt: an agent's earlier answers and its tools' results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turns: Vec<Turn>,
    /// Functions the model may call instead of answering (an agent step's tools).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Function>,
    /// What the answer must be, enforced while it is generated where the engine can (local
    /// constrained decoding, an endpoint's `response_format`) and checked after it anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Constraint>,
}

/// A form an answer must take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Constraint {
    /// Exactly one of these strings.
    OneOf(Vec<String>),
    /// JSON valid against this schema.
    JsonSchema(serde_json::Value),
}

/// A function offered to a model: the catalog tool's name, what it is for, and its arguments
/// as a JSON Schema, which is what every chat template and endpoint expects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Function {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub parameters: serde_json::Value,
}

/// A function call a model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolUse {
    /// Unique within its conversation; the result names it.
    pub id: String,
    pub name: String,
    pub arguments: serde_json::Value,
}

/// One message of an agent's conversation after its prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Turn {
    /// What the model said, and the calls it asked for.
    Assistant {
        #[serde(default)]
        content: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolUse>,
    },
    /// A call's result (or why it did not run), as the model reads it.
    Tool { id: String, content: String },
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
