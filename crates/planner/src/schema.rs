//! The JSON Schema of the workflow language, generated from the very types the parser reads,
//! so editors (YAML language servers) can complete and check workflows as people type them.

use crate::spec::raw::RawWorkflow;

/// The schema as pretty JSON with a trailing newline, byte-identical to `workflows/schema.json`.
pub fn workflow_schema() -> String {
    let schema = schemars::schema_for!(RawWorkflow);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
