//! A run's inputs: what the caller gave, checked against what the workflow declares, with
//! defaults filled in. Every problem is reported at once, with what to do about it.

use joule_planner::Workflow;
use joule_planner::spec::InputType;
use serde_json::{Map, Value};

/// Turns `name=value` text (from `--input`) into a value of the declared type: strings stay
/// as written, other types are parsed as JSON (`3`, `true`, `["a","b"]`).
pub fn parse_text(wf: &Workflow, name: &str, text: &str) -> Result<Value, String> {
    let Some(decl) = wf.inputs.iter().find(|i| i.name == name) else {
        return Err(unknown(wf, name));
    };
    if decl.ty == InputType::String {
        return Ok(Value::String(text.to_string()));
    }
    serde_json::from_str(text).map_err(|e| {
        format!(
            "input `{name}` is declared `{}`; `{text}` is not JSON of that type ({e})",
            type_name(decl.ty)
        )
    })
}

/// Checks given inputs and fills defaults.
pub fn resolve(
    wf: &Workflow,
    given: Map<String, Value>,
) -> Result<Map<String, Value>, Vec<String>> {
    let mut errors = Vec::new();
    for name in given.keys() {
        if !wf.inputs.iter().any(|i| &i.name == name) {
            errors.push(unknown(wf, name));
        }
    }
    let mut out = Map::new();
    for decl in &wf.inputs {
        match given.get(&decl.name).or(decl.default.as_ref()) {
            Some(v) if decl.ty.accepts(v) => {
                out.insert(decl.name.clone(), v.clone());
            }
            Some(v) => errors.push(format!(
                "input `{}` must be {}, got {v}",
                decl.name,
                type_name(decl.ty)
            )),
            None => errors.push(format!(
                "input `{}` is required{}: pass `--input {}=...` or put it in `--inputs FILE.json`",
                decl.name,
                decl.description
                    .as_ref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default(),
                decl.name
            )),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn unknown(wf: &Workflow, name: &str) -> String {
    let known: Vec<&str> = wf.inputs.iter().map(|i| i.name.as_str()).collect();
    if known.is_empty() {
        format!("`{}` takes no inputs, but `{name}` was given", wf.name)
    } else {
        format!(
            "`{}` has no input `{name}`; its inputs are: {}",
            wf.name,
            known.join(", ")
        )
    }
}

fn type_name(t: InputType) -> &'static str {
    match t {
        InputType::String => "a string",
        InputType::Integer => "an integer",
        InputType::Number => "a number",
        InputType::Boolean => "a boolean",
        InputType::Array => "an array",
        InputType::Object => "an object",
    }
}
