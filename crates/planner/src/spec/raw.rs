//! The workflow file exactly as written, before its meaning is checked.
//!
//! These types mirror the YAML one to one so that serde reports shape errors (wrong type,
//! unknown key) with the parser's own line and column, and so that the JSON Schema published in
//! `workflows/schema.json` is generated from the same definition the parser uses and cannot
//! drift from it. Every value the checker may later complain about is wrapped in [`At`] to keep
//! its position.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};

use super::{InputType, Objective, Task};

/// A value and the 1-based line and character column where the YAML node holding it starts.
#[derive(Debug, Clone)]
pub struct At<T> {
    pub value: T,
    pub line: usize,
    pub column: usize,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for At<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = serde_saphyr::Spanned::<T>::deserialize(deserializer)?;
        Ok(At {
            value: spanned.value,
            line: spanned.referenced.line() as usize,
            column: spanned.referenced.column() as usize,
        })
    }
}

impl<T: JsonSchema> JsonSchema for At<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

/// A YAML mapping whose order and key positions matter (steps, inputs, outputs): the file's
/// order is the order people expect in tables and ties, and errors point at the key.
#[derive(Debug, Clone)]
pub struct Entries<V>(pub Vec<(At<String>, V)>);

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of names to entries")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(Entries::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(key) = map.next_key::<At<String>>()? {
                    out.push((key, map.next_value()?));
                }
                Ok(Entries(out))
            }
        }
        deserializer.deserialize_map(EntriesVisitor(PhantomData))
    }
}

impl<V: JsonSchema> JsonSchema for Entries<V> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Entries_{}", V::schema_name()).into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let value = generator.subschema_for::<V>();
        schemars::json_schema!({
            "type": "object",
            "propertyNames": { "pattern": super::IDENT_PATTERN },
            "additionalProperties": value,
        })
    }
}

/// A joule workflow: what a multi-step agent workflow does, its inputs, budgets and policy.
/// joule decides how each step runs (model, device) when it plans the workflow.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "joule workflow")]
pub struct RawWorkflow {
    /// A short name for the workflow, used in run records and reports.
    pub name: At<String>,
    /// What the workflow is for.
    #[serde(default)]
    pub description: Option<String>,
    /// Values the caller passes in at run time, read in templates as `inputs.NAME`.
    #[serde(default)]
    pub inputs: Entries<RawInput>,
    /// Limits for one run of the workflow.
    #[serde(default)]
    pub budget: Option<RawBudget>,
    /// What the planner minimises inside the budget (default: energy).
    #[serde(default)]
    pub objective: Option<At<Objective>>,
    /// What the workflow may touch: providers, models and tools.
    #[serde(default)]
    pub policy: Option<RawPolicy>,
    /// How much answer quality the plan may give up against the reference (every llm step
    /// on its best-quality model): `{ within: 0.02 }` bounds the predicted loss of the
    /// scored outputs, with confidence; `any` lets steps with no measured quality run on the
    /// cheapest model. Without it, every step runs on its reference unless a measured figure
    /// bounds another model's loss at zero.
    #[serde(default)]
    #[schemars(with = "Option<QualitySchema>")]
    pub quality: Option<At<serde_json::Value>>,
    /// Examples of inputs with the expected values of some outputs, and how each output is
    /// scored: what `joule tune` measures the workflow's own quality on.
    #[serde(default)]
    pub examples: Option<RawExamples>,
    /// The steps, by name. Dependencies come from template references and `needs`.
    pub steps: Entries<RawStep>,
    /// Named results of a run, as templates over inputs and step outputs.
    #[serde(default)]
    pub outputs: Entries<At<String>>,
}

/// How much answer quality a plan may give up against the reference.
#[derive(JsonSchema)]
#[serde(untagged)]
#[schemars(rename = "WorkflowQuality")]
#[allow(dead_code)]
pub enum QualitySchema {
    /// `any`: steps with no measured quality may run on any model.
    Any(QualityAny),
    /// The most quality the plan may lose against the reference, 0..1.
    Within { within: f64 },
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "QualityAny")]
#[allow(dead_code)]
pub enum QualityAny {
    Any,
}

/// A workflow's examples: a JSONL file and how its outputs are scored.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Examples")]
pub struct RawExamples {
    /// A JSONL file, relative to the workflow file: one example per line, `{"id": ...,
    /// "inputs": {...}, "expected": {"OUTPUT": value, ...}}`.
    pub file: At<String>,
    /// Output name to metric: `exact`, `label`, `token_f1`, `rouge_l`, `json_fields`
    /// (`{ json_fields: { schema: {...} } }` to check a schema too), `tests` (the expected
    /// value is a HumanEval-style problem whose tests run in the sandbox), or `{ judge: {
    /// model: ID, prompt: TEMPLATE } }` (an llm call that rates the answer 0..10; the
    /// template reads `answer`, `expected` and `inputs`).
    pub score: Entries<At<serde_json::Value>>,
}

/// An input the caller passes to a run.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Input")]
pub struct RawInput {
    /// The input's type (default: string).
    #[serde(default, rename = "type")]
    pub ty: Option<At<InputType>>,
    #[serde(default)]
    pub description: Option<String>,
    /// Used when the caller does not pass the input; without one the input is required.
    #[serde(default)]
    pub default: Option<At<serde_json::Value>>,
}

/// An agent's loop: the tools it may call and its limits.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Agent")]
pub struct RawAgent {
    /// Catalog tools the model may call; each must be in `policy.tools`.
    pub tools: Vec<At<String>>,
    /// The most model calls in the loop, the last offered no tools (default: 4).
    #[serde(default)]
    pub max_turns: Option<At<u32>>,
    /// The agent's own limits, over all its calls: `latency`, `energy`, `cost`.
    #[serde(default)]
    pub budget: Option<RawBudget>,
}

/// Limits for one run. Every limit is optional.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Budget")]
pub struct RawBudget {
    /// The latency SLO for one run: `500ms`, `30s`, `2m`, `1h`.
    #[serde(default)]
    #[schemars(extend("pattern" = super::DURATION_PATTERN))]
    pub latency: Option<At<String>>,
    /// The energy budget for one run: `500J`, `2kJ`, `1.5Wh`, `0.2kWh`.
    #[serde(default)]
    #[schemars(extend("pattern" = super::ENERGY_PATTERN))]
    pub energy: Option<At<String>>,
    /// The cost budget for one run in US dollars: `$0.01` or `0.01 USD`.
    #[serde(default)]
    #[schemars(extend("pattern" = super::COST_PATTERN))]
    pub cost: Option<At<String>>,
}

/// What the workflow may touch. Anything not listed is refused.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Policy")]
pub struct RawPolicy {
    /// Where model calls may go: `local` (this machine's models) and/or endpoint names
    /// (default: `[local]`).
    #[serde(default)]
    pub providers: Option<Vec<At<String>>>,
    /// The only models the planner may choose (default: any in the catalog).
    #[serde(default)]
    pub models: Option<Vec<At<String>>>,
    /// The only tools this workflow may call (default: none).
    #[serde(default)]
    pub tools: Option<Vec<At<String>>>,
    /// Tools (of `tools`) that may use the network, where the catalog lets them (default:
    /// none: every tool runs without network).
    #[serde(default)]
    pub network: Option<Vec<At<String>>>,
    /// Sandbox layers every tool step needs; a step fails rather than run without one
    /// (`user_namespace`, `pid_namespace`, `mount_namespace`, `ipc_namespace`,
    /// `uts_namespace`, `net_namespace`, `cgroup`, `cgroup_memory`, `cgroup_cpu`,
    /// `closed_fds`, `landlock_fs`, `landlock_net`, `landlock_scope`, `seccomp`, `rlimits`,
    /// `empty_env`, `workdir`, `process_group`).
    #[serde(default)]
    pub sandbox: Option<Vec<At<String>>>,
    /// The most elements a `for_each` may fan out to (default 256); more fails the step.
    #[serde(default)]
    pub max_fan_out: Option<At<u32>>,
}

/// One step. Exactly one of `prompt` (an llm step), `tool` (a tool step) or `value` (a pure
/// template) says what kind of step it is.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Step")]
pub struct RawStep {
    /// What the step is for (shown in plans and reports).
    #[serde(default)]
    pub description: Option<String>,

    // llm steps
    /// The kind of work an llm step does; quality is profiled per task (default: answer).
    #[serde(default)]
    pub task: Option<At<Task>>,
    /// The user message of an llm step (a template).
    #[serde(default)]
    pub prompt: Option<At<String>>,
    /// The system message of an llm step (a template).
    #[serde(default)]
    pub system: Option<At<String>>,
    /// The most tokens the model may generate (default: 256).
    #[serde(default)]
    pub max_tokens: Option<At<u32>>,
    /// The lowest acceptable quality score for the step's task, 0..1.
    #[serde(default)]
    pub quality: Option<At<f64>>,
    /// Sampling temperature, 0..2 (default: 0, greedy and reproducible).
    #[serde(default)]
    pub temperature: Option<At<f64>>,
    /// What the answer must satisfy: a list of allowed answers, or a JSON Schema.
    #[serde(default)]
    pub output: Option<At<serde_json::Value>>,
    /// Pin the step to one catalog model instead of letting the planner choose.
    #[serde(default)]
    pub model: Option<At<String>>,
    /// Pin the step to one device (`cpu`, `cuda:0`) or endpoint name.
    #[serde(default)]
    pub device: Option<At<String>>,
    /// Make the llm step an agent: the model may call these tools, sees their results and
    /// decides again, up to `max_turns` model calls.
    #[serde(default)]
    pub agent: Option<At<RawAgent>>,

    // tool steps
    /// The tool a tool step calls; it must be listed in `policy.tools`.
    #[serde(default)]
    pub tool: Option<At<String>>,
    /// Named arguments of a tool step; strings are templates.
    #[serde(default)]
    pub args: Option<At<BTreeMap<String, serde_json::Value>>>,

    // value steps
    /// The result of a value step: a template, or any structure whose strings are templates.
    #[serde(default)]
    pub value: Option<At<serde_json::Value>>,

    // every kind
    /// Steps that must finish first, beyond those the templates refer to.
    #[serde(default)]
    pub needs: Option<Vec<At<String>>>,
    /// Run the step only when this expression is true; otherwise it is skipped.
    #[serde(default)]
    pub when: Option<At<String>>,
    /// Run the step once per element of this expression's value, read as `item`.
    #[serde(default)]
    pub for_each: Option<At<String>>,
    /// How many elements `for_each` is expected to produce, for the planner (default: 4).
    #[serde(default)]
    pub expect: Option<At<u32>>,
    /// How many times a failed attempt is retried (default: 0).
    #[serde(default)]
    pub retry: Option<At<u32>>,
    /// The delay before the first retry, doubled each time: `500ms`, `2s` (default: 1s).
    #[serde(default)]
    #[schemars(extend("pattern" = super::DURATION_PATTERN))]
    pub backoff: Option<At<String>>,
    /// The most one attempt may take: `30s`, `2m`.
    #[serde(default)]
    #[schemars(extend("pattern" = super::DURATION_PATTERN))]
    pub timeout: Option<At<String>>,
    /// Reuse the output of an earlier run with the same rendered inputs (default: false).
    #[serde(default)]
    pub cache: Option<bool>,
}
