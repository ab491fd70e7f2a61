//! `output:` constraints on an llm step's answer. A violation is a failed attempt (retried
//! like any other failure), never a silently wrong value handed to later steps.
//!
//! Small models answer "Bug." or "The category is billing" when asked for one word, so a
//! `one_of` answer is normalised before it is judged: trimmed of whitespace, quotes and final
//! punctuation and compared without case; failing that, an answer that names exactly one of
//! the choices as a whole word is taken as that choice. The step's output is always the
//! choice as the workflow wrote it. A `json_schema` answer may come in a Markdown code fence;
//! it must parse and satisfy the schema's `type`, `enum`, `const`, `required`, `properties`,
//! `additionalProperties: false`, `items`, `minItems`/`maxItems`, `minimum`/`maximum`,
//! `minLength`/`maxLength` and `pattern` (Rust `regex` syntax, which covers the usual ECMA
//! patterns but not lookaround); other keywords are not checked.

use joule_planner::spec::OutputSpec;
use serde_json::Value;

/// The checked output, or why the answer does not satisfy the constraint.
pub fn check(spec: &OutputSpec, answer: &str) -> Result<Value, String> {
    match spec {
        OutputSpec::OneOf(choices) => one_of(choices, answer).map(Value::String),
        OutputSpec::JsonSchema(schema) => {
            let body = unfence(answer);
            let v: Value = serde_json::from_str(body)
                .map_err(|e| format!("the answer is not JSON ({e}): {}", excerpt(answer)))?;
            validate(schema, &v, "$")?;
            Ok(v)
        }
    }
}

fn one_of(choices: &[String], answer: &str) -> Result<String, String> {
    let strip = |s: &str| {
        s.trim()
            .trim_matches(|c: char| c.is_whitespace() || "\"'`*.!,;:".contains(c))
            .to_lowercase()
    };
    let a = strip(answer);
    if let Some(c) = choices.iter().find(|c| strip(c) == a) {
        return Ok(c.clone());
    }
    let words: Vec<String> = a
        .split(|c: char| !c.is_alphanumeric() && c != '_' && c != '-')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    let named: Vec<&String> = choices
        .iter()
        .filter(|c| words.iter().any(|w| *w == strip(c)))
        .collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        _ => Err(format!(
            "the answer {} is not one of: {}",
            excerpt(answer),
            choices.join(", ")
        )),
    }
}

fn unfence(s: &str) -> &str {
    let t = s.trim();
    if let Some(rest) = t.strip_prefix("```") {
        let rest = rest.split_once('\n').map_or("", |(_, r)| r);
        return rest.trim_end().strip_suffix("```").unwrap_or(rest).trim();
    }
    t
}

fn excerpt(s: &str) -> String {
    let t = s.trim();
    if t.chars().count() > 80 {
        format!("`{}…`", t.chars().take(80).collect::<String>())
    } else {
        format!("`{t}`")
    }
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.as_f64().is_some_and(|x| x.fract() == 0.0),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => true,
    }
}

/// Checks `v` against the schema subset above; `at` is the JSON path for the message.
pub fn validate(schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let Some(s) = schema.as_object() else {
        return Ok(());
    };
    if let Some(ty) = s.get("type") {
        let ok = match ty {
            Value::String(t) => type_ok(t, v),
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(|t| type_ok(t, v)),
            _ => true,
        };
        if !ok {
            return Err(format!("{at}: expected {ty}, got {v}"));
        }
    }
    if let Some(Value::Array(options)) = s.get("enum")
        && !options.contains(v)
    {
        return Err(format!(
            "{at}: {v} is not one of {}",
            Value::Array(options.clone())
        ));
    }
    if let Some(c) = s.get("const")
        && c != v
    {
        return Err(format!("{at}: expected {c}, got {v}"));
    }
    let num = |k: &str| s.get(k).and_then(Value::as_f64);
    if let Some(x) = v.as_f64()
        && (num("minimum").is_some_and(|m| x < m) || num("maximum").is_some_and(|m| x > m))
    {
        return Err(format!("{at}: {x} is out of range"));
    }
    if let (Some(text), Some(pattern)) = (v.as_str(), s.get("pattern").and_then(Value::as_str)) {
        let re = regex::Regex::new(pattern)
            .map_err(|e| format!("{at}: the schema's pattern `{pattern}` is not supported: {e}"))?;
        if !re.is_match(text) {
            return Err(format!("{at}: `{text}` does not match `{pattern}`"));
        }
    }
    if let Some(text) = v.as_str() {
        let n = text.chars().count() as f64;
        if num("minLength").is_some_and(|m| n < m) || num("maxLength").is_some_and(|m| n > m) {
            return Err(format!(
                "{at}: a string of {n} characters is out of the allowed length"
            ));
        }
    }
    if let Some(obj) = v.as_object() {
        if let Some(Value::Array(required)) = s.get("required") {
            for r in required.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    return Err(format!("{at}: the required field `{r}` is missing"));
                }
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(sub) => validate(sub, val, &format!("{at}.{k}"))?,
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{at}: unexpected field `{k}`"));
                }
                None => {}
            }
        }
    }
    if let Some(items) = v.as_array() {
        let n = items.len() as f64;
        if num("minItems").is_some_and(|m| n < m) || num("maxItems").is_some_and(|m| n > m) {
            return Err(format!("{at}: {n} items is out of the allowed count"));
        }
        if let Some(sub) = s.get("items") {
            for (i, item) in items.iter().enumerate() {
                validate(sub, item, &format!("{at}[{i}]"))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_of_normalises_small_model_answers() {
        let spec = OutputSpec::OneOf(vec!["billing".into(), "bug".into(), "other".into()]);
        assert_eq!(check(&spec, " Bug.\n").unwrap(), json!("bug"));
        assert_eq!(
            check(&spec, "The category is billing").unwrap(),
            json!("billing")
        );
        assert!(check(&spec, "billing or bug").is_err(), "two choices named");
        assert!(check(&spec, "debugging").is_err(), "not a whole word");
        assert!(check(&spec, "").is_err());
    }

    #[test]
    fn json_answers_are_parsed_and_validated() {
        let schema = json!({
            "type": "object",
            "required": ["total"],
            "properties": {"total": {"type": "number", "minimum": 0}, "items": {"type": "array", "items": {"type": "string"}}},
            "additionalProperties": false
        });
        let spec = OutputSpec::JsonSchema(schema);
        let ok = check(&spec, "```json\n{\"total\": 12.5, \"items\": [\"a\"]}\n```").unwrap();
        assert_eq!(ok["total"], json!(12.5));
        assert!(
            check(&spec, "{\"items\": []}")
                .unwrap_err()
                .contains("`total`")
        );
        assert!(
            check(&spec, "{\"total\": -1}")
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            check(&spec, "{\"total\": 1, \"x\": 2}")
                .unwrap_err()
                .contains("unexpected")
        );
        assert!(
            check(&spec, "{\"total\": 1, \"items\": [3]}")
                .unwrap_err()
                .contains("$.items[0]")
        );
        assert!(
            check(&spec, "total is 12")
                .unwrap_err()
                .contains("not JSON")
        );
    }
}
