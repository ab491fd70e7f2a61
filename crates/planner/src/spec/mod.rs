//! The workflow language: YAML text in, a checked [`Workflow`] out.
//!
//! Parsing happens in two passes. serde (through serde-saphyr, which has resource budgets
//! against alias bombs and deep nesting) reads the file into [`raw`] types that mirror the YAML
//! and keep positions; then [`parse`] checks meaning (units, ranges, step kinds, names) and
//! builds the typed [`Workflow`], collecting every error it finds rather than stopping at the
//! first, so one `joule validate` shows a data team everything to fix. Cross-step checks
//! (references, cycles, policy) belong to [`crate::dag`].

mod quality;
pub mod raw;
pub mod units;

pub use quality::{Examples, Metric, OutputScore, QualityRule};

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diag::{ErrorCode, Pos, SourceFile, SpecError, suggest};
use raw::{At, RawBudget, RawStep, RawWorkflow};

/// Workflow files larger than this are refused before parsing: a 1,000-step workflow is about
/// 200 KB, so anything this large is a mistake or an attack, and the limit bounds memory.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;

/// Names of steps, inputs and outputs: identifiers, so templates can say `steps.NAME.output`.
pub const IDENT_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";
pub(crate) const DURATION_PATTERN: &str = r"^\s*(\d+(\.\d+)?\s*(ms|s|m|h)\s*)+$";
pub(crate) const ENERGY_PATTERN: &str = r"^\s*\d+(\.\d+)?\s*(J|kJ|MJ|Wh|kWh)\s*$";
pub(crate) const COST_PATTERN: &str = r"^\s*(\$\s*\d+(\.\d+)?|\d+(\.\d+)?\s*USD)\s*$";

/// Default `max_tokens` of an llm step.
pub const DEFAULT_MAX_TOKENS: u32 = 256;
/// Default number of `for_each` elements the planner assumes when a step gives no `expect`.
pub const DEFAULT_EXPECT: u32 = 4;
/// Default delay before the first retry.
pub const DEFAULT_BACKOFF_S: f64 = 1.0;
/// The most tokens any step may ask for; beyond every catalog model's context.
pub const MAX_TOKENS_LIMIT: u32 = 131_072;

/// A parsed, checked workflow. Every position points into [`Workflow::source`].
#[derive(Debug, Clone, Serialize)]
pub struct Workflow {
    pub name: String,
    pub description: Option<String>,
    pub inputs: Vec<Input>,
    pub budget: Budget,
    pub objective: Objective,
    pub policy: Policy,
    pub steps: Vec<Step>,
    pub outputs: Vec<Output>,
    /// How much quality the plan may give up, and what unmeasured steps run on.
    pub quality: QualityRule,
    /// What the workflow's own quality is measured on (`joule tune`).
    pub examples: Option<Examples>,
    #[serde(skip)]
    pub source: SourceFile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    String,
    Integer,
    Number,
    Boolean,
    Array,
    Object,
}

impl InputType {
    /// Whether a JSON value is of this type (an integer is also a number).
    pub fn accepts(self, v: &serde_json::Value) -> bool {
        use serde_json::Value as V;
        match (self, v) {
            (InputType::String, V::String(_))
            | (InputType::Number, V::Number(_))
            | (InputType::Boolean, V::Bool(_))
            | (InputType::Array, V::Array(_))
            | (InputType::Object, V::Object(_)) => true,
            (InputType::Integer, V::Number(n)) => n.is_i64() || n.is_u64(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Input {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: InputType,
    pub description: Option<String>,
    pub default: Option<serde_json::Value>,
    pub pos: Pos,
}

/// A workflow's limits for one run. `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub latency_s: Option<f64>,
    pub energy_j: Option<f64>,
    pub cost_usd: Option<f64>,
    /// The most predicted loss of output quality against the reference (the workflow's
    /// `quality: { within }`), summed over steps as upper confidence bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_loss: Option<f64>,
}

/// What the planner minimises inside the budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    #[default]
    Energy,
    Cost,
    Latency,
}

/// The kind of work an llm step does; models' quality is profiled per task.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Deserialize,
    Serialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Classify,
    Extract,
    Summarize,
    Write,
    Code,
    #[default]
    Answer,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Classify => "classify",
            Task::Extract => "extract",
            Task::Summarize => "summarize",
            Task::Write => "write",
            Task::Code => "code",
            Task::Answer => "answer",
        }
    }
}

/// The provider name that means "this machine's own models".
pub const LOCAL_PROVIDER: &str = "local";

/// What a workflow may touch. Enforced when compiling (forbidden pins and tools are errors, the
/// planner never proposes a forbidden config) and again when running.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    /// `local` and/or endpoint names.
    pub providers: Vec<String>,
    /// The models the planner may choose; `None` means any in the catalog.
    pub models: Option<Vec<String>>,
    /// The tools the workflow may call.
    pub tools: Vec<String>,
    /// The tools that may use the network (each also in `tools`).
    pub network: Vec<String>,
    /// Sandbox layers every tool step needs.
    pub sandbox: Vec<String>,
    /// The most elements a `for_each` may fan out to; more fails the step. Each element is
    /// a call (a process, for a tool), so an unbounded fan-out is a resource attack.
    pub max_fan_out: u32,
}

/// A `for_each`'s cap when neither the workflow nor the operator sets one.
pub const DEFAULT_MAX_FAN_OUT: u32 = 256;

impl Default for Policy {
    fn default() -> Self {
        Self {
            providers: vec![LOCAL_PROVIDER.to_string()],
            models: None,
            tools: Vec::new(),
            network: Vec::new(),
            sandbox: Vec::new(),
            max_fan_out: DEFAULT_MAX_FAN_OUT,
        }
    }
}

/// The tool sandbox's layers, by the names policies use (the executor's `sandbox::Layer`).
pub const SANDBOX_LAYERS: [&str; 18] = [
    "process_group",
    "empty_env",
    "workdir",
    "rlimits",
    "user_namespace",
    "pid_namespace",
    "mount_namespace",
    "ipc_namespace",
    "uts_namespace",
    "net_namespace",
    "cgroup",
    "cgroup_memory",
    "cgroup_cpu",
    "closed_fds",
    "landlock_fs",
    "landlock_net",
    "landlock_scope",
    "seccomp",
];

/// Text in minijinja syntax, with where it starts in the file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Template {
    pub source: String,
    #[serde(skip)]
    pub pos: Pos,
}

/// A JSON value whose strings are templates (tool arguments, value steps).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplatedValue {
    pub value: serde_json::Value,
    #[serde(skip)]
    pub pos: Pos,
}

impl TemplatedValue {
    /// Every string in the value, each a template, in document order.
    pub fn strings(&self) -> Vec<&str> {
        fn walk<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
            match v {
                serde_json::Value::String(s) => out.push(s),
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                serde_json::Value::Object(o) => o.values().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&self.value, &mut out);
        out
    }
}

/// A name written somewhere in the file (a `needs` entry, a pin), with its position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Name {
    pub name: String,
    #[serde(skip)]
    pub pos: Pos,
}

/// A constraint the answer of an llm step must satisfy.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputSpec {
    /// The answer, trimmed, must be one of these.
    OneOf(Vec<String>),
    /// The answer must be JSON valid against this schema.
    JsonSchema(serde_json::Value),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LlmStep {
    pub task: Task,
    pub prompt: Template,
    pub system: Option<Template>,
    pub max_tokens: u32,
    pub quality: Option<f64>,
    pub temperature: f64,
    pub output: Option<OutputSpec>,
    pub model: Option<Name>,
    pub device: Option<Name>,
    /// Present when the step is an agent: a loop of model and tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Box<Agent>>,
}

/// An agent's loop. The planner plans it as one llm step whose calls are its expected turns;
/// the executor runs the loop, each tool call policy-checked and sandboxed like a tool step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Agent {
    pub tools: Vec<Name>,
    /// The most model calls; the last is offered no tools, so the loop ends with an answer.
    pub max_turns: u32,
    /// Limits over all of the agent's calls (`quality_loss` is unused).
    pub budget: Budget,
}

/// Model calls an agent makes unless its step says `max_turns`.
pub const DEFAULT_MAX_TURNS: u32 = 4;
/// The most `max_turns` may be: each turn re-reads the whole conversation.
pub const MAX_TURNS_LIMIT: u32 = 32;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolStep {
    pub tool: Name,
    pub args: BTreeMap<String, TemplatedValue>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
// A workflow holds a few dozen steps, built once per compile: boxing the llm step would add an
// indirection to every read and save nothing that matters.
#[allow(clippy::large_enum_variant)]
pub enum StepKind {
    Llm(LlmStep),
    Tool(ToolStep),
    Value(TemplatedValue),
}

impl StepKind {
    pub fn kind(&self) -> Kind {
        match self {
            StepKind::Llm(_) => Kind::Llm,
            StepKind::Tool(_) => Kind::Tool,
            StepKind::Value(_) => Kind::Value,
        }
    }
}

/// Which of the three kinds a step is, without its contents: what plans, records and reports
/// say of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Llm,
    Tool,
    Value,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Llm => "llm",
            Kind::Tool => "tool",
            Kind::Value => "value",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub id: String,
    pub description: Option<String>,
    #[serde(flatten)]
    pub kind: StepKind,
    pub needs: Vec<Name>,
    pub when: Option<Template>,
    pub for_each: Option<Template>,
    /// For the planner: how many elements `for_each` is expected to produce.
    pub expect: u32,
    pub retry: u32,
    pub backoff_s: f64,
    pub timeout_s: Option<f64>,
    pub cache: bool,
    #[serde(skip)]
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Output {
    pub name: String,
    pub template: Template,
    #[serde(skip)]
    pub pos: Pos,
}

/// Reads and parses a workflow file from disk.
pub fn load(path: &std::path::Path) -> Result<Workflow, Vec<SpecError>> {
    parse(&read_source(path)?)
}

/// Reads a YAML file joule consumes (workflow, catalog, profile), refusing oversized and
/// non-UTF-8 files with a clear error.
pub fn read_source(path: &std::path::Path) -> Result<SourceFile, Vec<SpecError>> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| vec![io_error(&name, &e)])?;
    if meta.len() > MAX_FILE_BYTES as u64 {
        return Err(vec![too_large(&name, meta.len() as usize)]);
    }
    let bytes = std::fs::read(path).map_err(|e| vec![io_error(&name, &e)])?;
    let text = String::from_utf8(bytes).map_err(|e| {
        vec![
            SpecError::whole_file(
                &name,
                ErrorCode::Syntax,
                format!(
                    "the file is not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            )
            .with_help("save the workflow as UTF-8"),
        ]
    })?;
    Ok(SourceFile::new(name, text))
}

/// Deserialises any of joule's YAML files with the parser's safety limits, turning errors into
/// positioned diagnostics.
/// The deepest nesting of YAML collections a workflow, catalog or profile file may use.
pub const MAX_NESTING: usize = 32;

pub fn from_yaml<T: serde::de::DeserializeOwned>(file: &SourceFile) -> Result<T, Vec<SpecError>> {
    if file.text().len() > MAX_FILE_BYTES {
        return Err(vec![too_large(file.name(), file.text().len())]);
    }
    // Nesting is capped well below serde-saphyr's default of 64: each level is a recursive
    // deserializer call, and in unoptimised builds those frames are large enough for 64 levels
    // of `serde_json::Value` to overflow a 2 MiB thread stack. No workflow needs 32 levels.
    let options = serde_saphyr::options! {
        with_snippet: false,
        budget: serde_saphyr::budget! { max_depth: MAX_NESTING },
    };
    serde_saphyr::from_str_with_options(file.text(), options)
        .map_err(|e| vec![yaml_error(file, &e)])
}

fn io_error(name: &str, e: &std::io::Error) -> SpecError {
    SpecError::whole_file(name, ErrorCode::Io, format!("cannot read the file: {e}"))
        .with_help("check the path and its permissions")
}

fn too_large(name: &str, len: usize) -> SpecError {
    SpecError::whole_file(
        name,
        ErrorCode::Syntax,
        format!("the file is {len} bytes; workflow files are limited to {MAX_FILE_BYTES} bytes"),
    )
    .with_help("split the workflow, or move large data into inputs")
}

/// Parses workflow text. All errors found are returned, sorted by position.
pub fn parse(file: &SourceFile) -> Result<Workflow, Vec<SpecError>> {
    let raw: RawWorkflow = from_yaml(file)?;
    let mut checker = Checker {
        file,
        errors: Vec::new(),
    };
    let workflow = checker.workflow(raw);
    if checker.errors.is_empty() {
        Ok(workflow)
    } else {
        let mut errors = checker.errors;
        errors.sort_by_key(|e| e.pos);
        Err(errors)
    }
}

/// Turns a serde-saphyr error into a [`SpecError`] with a did-you-mean where one helps.
fn yaml_error(file: &SourceFile, err: &serde_saphyr::Error) -> SpecError {
    use serde_saphyr::Error as E;
    let offset = err
        .location()
        .filter(|l| l.line() > 0)
        .map_or(0, |l| file.offset(l.line() as usize, l.column() as usize));
    // Alias and snippet wrappers carry the position of use; the cause is inside.
    let mut err = err;
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = err {
        err = error;
    }
    match err {
        E::SerdeUnknownField {
            field, expected, ..
        } => SpecError::at(
            file,
            offset,
            field.len(),
            ErrorCode::UnknownKey,
            format!("unknown key `{field}`"),
        )
        .with_help(suggest(field, "key", expected)),
        E::SerdeUnknownVariant {
            variant, expected, ..
        } => SpecError::at(
            file,
            offset,
            variant.len(),
            ErrorCode::InvalidValue,
            format!("unknown value `{variant}`"),
        )
        .with_help(suggest(variant, "value", expected)),
        E::SerdeMissingField { field, .. } => SpecError::at(
            file,
            offset,
            1,
            ErrorCode::Syntax,
            format!("missing key `{field}`"),
        )
        .with_help(match *field {
            "steps" => "a workflow needs `steps:`, a mapping of step names to steps".to_string(),
            "name" => "give the workflow a `name:`".to_string(),
            f => format!("add `{f}:`"),
        }),
        other => {
            let message = first_line(&other.to_string());
            let over_limit = matches!(
                other,
                E::Budget { .. }
                    | E::AliasReplayLimitExceeded { .. }
                    | E::AliasExpansionLimitExceeded { .. }
                    | E::AliasReplayStackDepthExceeded { .. }
            );
            let help = if over_limit {
                "the file exceeds the parser's safety limits (too deep, too many aliases or nodes); simplify it"
            } else {
                "check the YAML syntax and the shape of the workflow (see `joule schema`)"
            };
            SpecError::at(file, offset, 1, ErrorCode::Syntax, message).with_help(help)
        }
    }
}

/// The message without the parser's own trailing position (joule prints its own).
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message).trim();
    let line = match line.find(" at line ") {
        Some(i) => &line[..i],
        None => line,
    };
    line.to_string()
}

/// Collects meaning errors while building the typed workflow.
struct Checker<'a> {
    file: &'a SourceFile,
    errors: Vec<SpecError>,
}

impl Checker<'_> {
    fn pos<T>(&self, at: &At<T>) -> Pos {
        self.file.position(self.file.offset(at.line, at.column))
    }

    fn error<T>(
        &mut self,
        at: &At<T>,
        len: usize,
        code: ErrorCode,
        message: String,
        help: impl Into<String>,
    ) {
        let offset = self.file.offset(at.line, at.column);
        self.errors
            .push(SpecError::at(self.file, offset, len, code, message).with_help(help));
    }

    fn name(&mut self, at: &At<String>, what: &str) {
        let ok = at
            .value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && at
                .value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            self.error(
                at,
                at.value.len().max(1),
                ErrorCode::InvalidValue,
                format!("`{}` is not a valid {what} name", at.value),
                format!(
                    "use letters, digits and `_`, starting with a letter (e.g. `{}`), so templates can refer to it",
                    suggest_ident(&at.value)
                ),
            );
        }
    }

    fn template(&self, at: &At<String>) -> Template {
        Template {
            source: at.value.clone(),
            pos: self.pos(at),
        }
    }

    fn duration(&mut self, at: &At<String>) -> Option<f64> {
        match units::parse_duration(&at.value) {
            Ok(v) => Some(v),
            Err(help) => {
                self.error(
                    at,
                    at.value.len(),
                    ErrorCode::InvalidValue,
                    "invalid duration".into(),
                    help,
                );
                None
            }
        }
    }

    fn workflow(&mut self, raw: RawWorkflow) -> Workflow {
        let mut inputs = Vec::new();
        for (key, input) in raw.inputs.0 {
            self.name(&key, "input");
            let ty = input.ty.as_ref().map_or(InputType::String, |t| t.value);
            if let Some(default) = &input.default
                && !ty.accepts(&default.value)
            {
                self.error(
                    default,
                    1,
                    ErrorCode::InvalidValue,
                    format!(
                        "the default of input `{}` is not of type {}",
                        key.value,
                        json_name(ty)
                    ),
                    format!(
                        "give {} default, or change the input's `type`",
                        with_article(json_name(ty))
                    ),
                );
            }
            inputs.push(Input {
                pos: self.pos(&key),
                name: key.value,
                ty,
                description: input.description,
                default: input.default.map(|d| d.value),
            });
        }

        let budget = raw
            .budget
            .as_ref()
            .map_or_else(Budget::default, |b| self.budget(b));
        let quality = raw
            .quality
            .as_ref()
            .map_or(QualityRule::default(), |q| self.quality_rule(q));
        let budget = Budget {
            quality_loss: quality.within(),
            ..budget
        };
        let examples = raw.examples.map(|e| self.examples(e));

        let policy = raw.policy.map_or_else(Policy::default, |p| {
            let tools = p.tools.map(strings).unwrap_or_default();
            for t in p.network.iter().flatten() {
                if !tools.contains(&t.value) {
                    self.error(
                        t,
                        t.value.len(),
                        ErrorCode::Policy,
                        format!(
                            "`policy.network` names `{}`, which is not in `policy.tools`",
                            t.value
                        ),
                        "a tool must be allowed before it can be given the network",
                    );
                }
            }
            for l in p.sandbox.iter().flatten() {
                if !SANDBOX_LAYERS.contains(&l.value.as_str()) {
                    let help = match crate::diag::did_you_mean(&l.value, SANDBOX_LAYERS) {
                        Some(c) => format!("did you mean `{c}`?"),
                        None => format!("sandbox layers: {}", SANDBOX_LAYERS.join(", ")),
                    };
                    self.error(
                        l,
                        l.value.len(),
                        ErrorCode::InvalidValue,
                        format!("`{}` is not a sandbox layer", l.value),
                        help,
                    );
                }
            }
            Policy {
                providers: p
                    .providers
                    .map_or_else(|| vec![LOCAL_PROVIDER.to_string()], strings),
                models: p.models.map(strings),
                tools,
                network: p.network.map(strings).unwrap_or_default(),
                sandbox: p.sandbox.map(strings).unwrap_or_default(),
                max_fan_out: match &p.max_fan_out {
                    Some(n) if n.value == 0 => {
                        self.error(
                            n,
                            1,
                            ErrorCode::InvalidValue,
                            "`max_fan_out` must be at least 1".into(),
                            "give the most elements a `for_each` may have",
                        );
                        DEFAULT_MAX_FAN_OUT
                    }
                    Some(n) => n.value,
                    None => DEFAULT_MAX_FAN_OUT,
                },
            }
        });

        if raw.steps.0.is_empty() {
            let at = At {
                value: (),
                line: raw.name.line,
                column: raw.name.column,
            };
            self.error(
                &at,
                1,
                ErrorCode::InvalidValue,
                "the workflow has no steps".into(),
                "add at least one step under `steps:`",
            );
        }
        let steps = raw
            .steps
            .0
            .into_iter()
            .filter_map(|(key, step)| self.step(key, step))
            .collect();

        let outputs = raw
            .outputs
            .0
            .into_iter()
            .map(|(key, template)| {
                self.name(&key, "output");
                Output {
                    pos: self.pos(&key),
                    name: key.value,
                    template: self.template(&template),
                }
            })
            .collect::<Vec<Output>>();
        for score in examples.iter().flat_map(|e| &e.scores) {
            if !outputs.iter().any(|o| o.name == score.output) {
                let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
                let offset = score.pos.offset;
                self.errors.push(
                    SpecError::at(
                        self.file,
                        offset,
                        score.output.len(),
                        ErrorCode::UnknownReference,
                        format!(
                            "`examples.score` scores `{}`, which is not an output",
                            score.output
                        ),
                    )
                    .with_help(suggest(&score.output, "output", &names)),
                );
            }
        }

        Workflow {
            name: raw.name.value,
            description: raw.description,
            inputs,
            budget,
            objective: raw.objective.map(|o| o.value).unwrap_or_default(),
            policy,
            steps,
            outputs,
            quality,
            examples,
            source: self.file.clone(),
        }
    }

    fn positive(
        &mut self,
        at: &At<String>,
        parse: fn(&str) -> Result<f64, String>,
        what: &str,
    ) -> Option<f64> {
        match parse(&at.value) {
            Ok(v) if v > 0.0 => Some(v),
            Ok(_) => {
                self.error(
                    at,
                    at.value.len(),
                    ErrorCode::InvalidValue,
                    format!("the {what} budget must be more than zero"),
                    format!("remove the {what} budget to leave it unlimited"),
                );
                None
            }
            Err(help) => {
                self.error(
                    at,
                    at.value.len(),
                    ErrorCode::InvalidValue,
                    format!("invalid {what} budget"),
                    help,
                );
                None
            }
        }
    }

    fn step(&mut self, key: At<String>, raw: RawStep) -> Option<Step> {
        self.name(&key, "step");
        let id = key.value.clone();
        let kind = self.step_kind(&key, &raw)?;

        let needs = raw
            .needs
            .unwrap_or_default()
            .into_iter()
            .map(|n| Name {
                pos: self.pos(&n),
                name: n.value,
            })
            .collect();
        let when = raw.when.as_ref().map(|w| self.template(w));
        let for_each = raw.for_each.as_ref().map(|w| self.template(w));
        if let (Some(expect), None) = (&raw.expect, &raw.for_each) {
            self.error(
                expect,
                1,
                ErrorCode::InvalidValue,
                format!("`expect` on step `{id}`, which has no `for_each`"),
                "`expect` hints how many elements `for_each` produces; remove it or add `for_each`",
            );
        }
        let expect = raw.expect.as_ref().map_or(DEFAULT_EXPECT, |e| e.value);
        let backoff_s = raw
            .backoff
            .as_ref()
            .and_then(|b| self.duration(b))
            .unwrap_or(DEFAULT_BACKOFF_S);
        let timeout_s = match raw.timeout.as_ref().map(|t| (t, self.duration(t))) {
            Some((t, Some(v))) if v <= 0.0 => {
                self.error(
                    t,
                    t.value.len(),
                    ErrorCode::InvalidValue,
                    "the timeout must be more than zero".into(),
                    "remove `timeout` for no limit",
                );
                None
            }
            Some((_, v)) => v,
            None => None,
        };
        Some(Step {
            pos: self.pos(&key),
            id,
            description: raw.description,
            kind,
            needs,
            when,
            for_each,
            expect,
            retry: raw.retry.map_or(0, |r| r.value),
            backoff_s,
            timeout_s,
            cache: raw.cache.unwrap_or(false),
        })
    }

    /// Decides what kind a step is, and rejects keys that do not apply to that kind.
    fn step_kind(&mut self, key: &At<String>, raw: &RawStep) -> Option<StepKind> {
        let id = &key.value;
        let markers: Vec<(&str, usize, usize)> = [
            raw.prompt.as_ref().map(|a| ("prompt", a.line, a.column)),
            raw.tool.as_ref().map(|a| ("tool", a.line, a.column)),
            raw.value.as_ref().map(|a| ("value", a.line, a.column)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let kind_of = |m: &str| match m {
            "prompt" => "an llm step",
            "tool" => "a tool step",
            _ => "a value step",
        };
        match markers.as_slice() {
            [] => {
                self.error(
                    key,
                    id.len(),
                    ErrorCode::StepKind,
                    format!("step `{id}` has no `prompt`, `tool` or `value`"),
                    "give it a `prompt:` (an llm step), a `tool:` (a tool step) or a `value:` (a template)",
                );
                return None;
            }
            [_] => {}
            [first, second, ..] => {
                let at = At {
                    value: (),
                    line: second.1,
                    column: second.2,
                };
                self.error(
                    &at,
                    second.0.len(),
                    ErrorCode::StepKind,
                    format!(
                        "step `{id}` is both {} (`{}`) and {} (`{}`)",
                        kind_of(first.0),
                        first.0,
                        kind_of(second.0),
                        second.0
                    ),
                    "split it into two steps; the second can refer to the first's output",
                );
                return None;
            }
        }

        // Keys that belong to one kind only.
        let llm_only = [
            ("task", raw.task.as_ref().map(|a| (a.line, a.column))),
            ("system", raw.system.as_ref().map(|a| (a.line, a.column))),
            (
                "max_tokens",
                raw.max_tokens.as_ref().map(|a| (a.line, a.column)),
            ),
            ("quality", raw.quality.as_ref().map(|a| (a.line, a.column))),
            (
                "temperature",
                raw.temperature.as_ref().map(|a| (a.line, a.column)),
            ),
            ("output", raw.output.as_ref().map(|a| (a.line, a.column))),
            ("model", raw.model.as_ref().map(|a| (a.line, a.column))),
            ("device", raw.device.as_ref().map(|a| (a.line, a.column))),
            ("agent", raw.agent.as_ref().map(|a| (a.line, a.column))),
        ];
        let tool_only = [("args", raw.args.as_ref().map(|a| (a.line, a.column)))];
        let kind = markers[0].0;
        let misplaced: Vec<(&str, (usize, usize), &str)> = llm_only
            .iter()
            .filter(|_| kind != "prompt")
            .filter_map(|(k, at)| at.map(|at| (*k, at, "llm steps (with `prompt`)")))
            .chain(
                tool_only
                    .iter()
                    .filter(|_| kind != "tool")
                    .filter_map(|(k, at)| at.map(|at| (*k, at, "tool steps (with `tool`)"))),
            )
            .collect();
        for (k, (line, column), applies) in misplaced {
            let at = At {
                value: (),
                line,
                column,
            };
            self.error(
                &at,
                1,
                ErrorCode::StepKind,
                format!("`{k}` does not apply to {} like `{id}`", kind_of(kind)),
                format!("`{k}` applies to {applies} only; remove it"),
            );
        }

        Some(match kind {
            "prompt" => StepKind::Llm(self.llm(raw)),
            "tool" => {
                let tool = raw.tool.as_ref()?;
                let args = raw
                    .args
                    .as_ref()
                    .map(|a| {
                        let pos = self.pos(a);
                        a.value
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.clone(),
                                    TemplatedValue {
                                        value: v.clone(),
                                        pos,
                                    },
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                StepKind::Tool(ToolStep {
                    tool: Name {
                        name: tool.value.clone(),
                        pos: self.pos(tool),
                    },
                    args,
                })
            }
            _ => {
                let value = raw.value.as_ref()?;
                StepKind::Value(TemplatedValue {
                    value: value.value.clone(),
                    pos: self.pos(value),
                })
            }
        })
    }

    fn llm(&mut self, raw: &RawStep) -> LlmStep {
        let prompt = raw
            .prompt
            .as_ref()
            .map(|p| self.template(p))
            .unwrap_or_else(|| Template {
                source: String::new(),
                pos: Pos::default(),
            });
        let max_tokens = match &raw.max_tokens {
            Some(m) if m.value == 0 || m.value > MAX_TOKENS_LIMIT => {
                self.error(
                    m,
                    1,
                    ErrorCode::InvalidValue,
                    format!("`max_tokens` must be between 1 and {MAX_TOKENS_LIMIT}"),
                    format!("the default is {DEFAULT_MAX_TOKENS}"),
                );
                DEFAULT_MAX_TOKENS
            }
            Some(m) => m.value,
            None => DEFAULT_MAX_TOKENS,
        };
        let quality = raw.quality.as_ref().and_then(|q| {
            if (0.0..=1.0).contains(&q.value) {
                Some(q.value)
            } else {
                self.error(
                    q,
                    1,
                    ErrorCode::InvalidValue,
                    format!("`quality` is {}, outside 0..1", q.value),
                    "a quality floor is a score between 0 (anything) and 1 (perfect)",
                );
                None
            }
        });
        let temperature = match &raw.temperature {
            Some(t) if !(0.0..=2.0).contains(&t.value) => {
                self.error(
                    t,
                    1,
                    ErrorCode::InvalidValue,
                    format!("`temperature` is {}, outside 0..2", t.value),
                    "use 0 for greedy, reproducible answers",
                );
                0.0
            }
            Some(t) => t.value,
            None => 0.0,
        };
        let output = raw.output.as_ref().and_then(|o| self.output_spec(o));
        let agent = raw.agent.as_ref().map(|a| self.agent(a));
        LlmStep {
            agent: agent.map(Box::new),
            task: raw.task.as_ref().map(|t| t.value).unwrap_or_default(),
            prompt,
            system: raw.system.as_ref().map(|s| self.template(s)),
            max_tokens,
            quality,
            temperature,
            output,
            model: raw.model.as_ref().map(|m| Name {
                name: m.value.clone(),
                pos: self.pos(m),
            }),
            device: raw.device.as_ref().map(|d| Name {
                name: d.value.clone(),
                pos: self.pos(d),
            }),
        }
    }

    fn agent(&mut self, at: &At<raw::RawAgent>) -> Agent {
        let raw = &at.value;
        if raw.tools.is_empty() {
            self.error(
                at,
                1,
                ErrorCode::InvalidValue,
                "an agent needs at least one tool".into(),
                "list the catalog tools it may call in `agent.tools`, or make it a plain llm step",
            );
        }
        let max_turns = match &raw.max_turns {
            Some(m) if m.value < 2 || m.value > MAX_TURNS_LIMIT => {
                self.error(
                    m,
                    1,
                    ErrorCode::InvalidValue,
                    format!("`max_turns` must be between 2 and {MAX_TURNS_LIMIT}"),
                    format!(
                        "one turn calls tools and a later one answers; the default is {DEFAULT_MAX_TURNS}"
                    ),
                );
                DEFAULT_MAX_TURNS
            }
            Some(m) => m.value,
            None => DEFAULT_MAX_TURNS,
        };
        let budget = raw
            .budget
            .as_ref()
            .map_or_else(Budget::default, |b| self.budget(b));
        Agent {
            tools: raw
                .tools
                .iter()
                .map(|t| Name {
                    name: t.value.clone(),
                    pos: self.pos(t),
                })
                .collect(),
            max_turns,
            budget,
        }
    }

    fn budget(&mut self, b: &RawBudget) -> Budget {
        Budget {
            latency_s: b
                .latency
                .as_ref()
                .and_then(|d| self.positive(d, units::parse_duration, "latency")),
            energy_j: b
                .energy
                .as_ref()
                .and_then(|d| self.positive(d, units::parse_energy, "energy")),
            cost_usd: b
                .cost
                .as_ref()
                .and_then(|d| self.positive(d, units::parse_cost, "cost")),
            quality_loss: None,
        }
    }

    fn output_spec(&mut self, at: &At<serde_json::Value>) -> Option<OutputSpec> {
        use serde_json::Value as V;
        match &at.value {
            V::Array(items) if !items.is_empty() && items.iter().all(|i| i.is_string()) => {
                Some(OutputSpec::OneOf(
                    items
                        .iter()
                        .filter_map(|i| i.as_str().map(str::to_string))
                        .collect(),
                ))
            }
            V::Object(o)
                if o.contains_key("type")
                    || o.contains_key("enum")
                    || o.contains_key("properties") =>
            {
                Some(OutputSpec::JsonSchema(at.value.clone()))
            }
            _ => {
                self.error(
                    at,
                    1,
                    ErrorCode::InvalidValue,
                    "`output` is neither a list of answers nor a JSON Schema".into(),
                    "write `output: [billing, bug, other]`, or a schema such as `output: { type: object, properties: {...} }`",
                );
                None
            }
        }
    }
}

fn strings(v: Vec<At<String>>) -> Vec<String> {
    v.into_iter().map(|a| a.value).collect()
}

fn with_article(noun: &str) -> String {
    let article = if noun.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {noun}")
}

fn json_name(t: InputType) -> &'static str {
    match t {
        InputType::String => "string",
        InputType::Integer => "integer",
        InputType::Number => "number",
        InputType::Boolean => "boolean",
        InputType::Array => "array",
        InputType::Object => "object",
    }
}

/// A valid identifier close to `name`, for the help line.
fn suggest_ident(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        s.insert(0, '_');
    }
    s
}
