//! Function calling on a local model: the grammar that makes a tool call well formed, and the
//! parser that reads the calls back out of the answer.
//!
//! The models joule runs write calls the Hermes way (Qwen2.5's template teaches it):
//! `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`. Left to itself a small model
//! misspells a name or leaves a brace open; under [`grammar`] the JSON after the tag must name
//! one of the offered functions and match its parameters' schema, so what [`parse`] reads always
//! parses. Small models often leave the tags out and write the bare JSON object; the grammar
//! takes that form too, as a call. With `tool_choice: auto` the answer may instead be a reply
//! (text that does not begin like a call); with `required` or a named function it must be a
//! call.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::chat::{TOOL_CALL_CLOSE, TOOL_CALL_OPEN};
use super::constrain::{Grammar, json_rule, literal};

/// Whether and which tools the model must call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    /// The model decides: a reply, or calls.
    Auto,
    /// At least one call.
    Required,
    /// A call of this function.
    Named(String),
    /// No call: a reply. The tools stay in the prompt, so the model reads the conversation it
    /// had with them, but an answer that begins like a call cannot be written (a small model
    /// told to stop calling otherwise writes the call as its reply).
    None,
}

/// A function the model may call: its name and its arguments' JSON Schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Function {
    pub name: String,
    pub parameters: Value,
}

/// The grammar of an answer that calls `functions` as `choice` says; `parallel` allows more
/// than one call in a turn. With `auto`, `reply` is what an answer that calls nothing must
/// match (any text that does not begin like a call, when `None`).
pub fn grammar(
    functions: &[Function],
    choice: &Choice,
    parallel: bool,
    reply: Option<&Grammar>,
) -> Grammar {
    if *choice == Choice::None {
        return reply_only(reply);
    }
    let callable: Vec<&Function> = match choice {
        Choice::Named(name) => functions.iter().filter(|f| &f.name == name).collect(),
        _ => functions.iter().collect(),
    };
    let alternatives: Vec<Value> = callable
        .iter()
        .map(|f| {
            json!({
                "type": "object",
                "properties": {
                    "name": {"const": f.name},
                    "arguments": arguments_schema(&f.parameters),
                },
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    let call = if alternatives.len() == 1 {
        alternatives.into_iter().next().expect("one")
    } else {
        json!({"anyOf": alternatives})
    };
    let open = literal(&format!("{TOOL_CALL_OPEN}\n"));
    let close = literal(&format!("\n{TOOL_CALL_CLOSE}"));
    let more = if parallel {
        format!("(\"\\n\" {open} call {close})*")
    } else {
        String::new()
    };
    let rules = format!(
        "tagged: {open} call {close} {more}\ncall: {}\n",
        json_rule(&call)
    );
    // A call comes tagged, or as the bare JSON object small models often write instead; with
    // `auto` the answer may also be a reply, any text that does not begin like a call.
    let start = match (choice, reply.map(Grammar::renamed_start)) {
        (Choice::Auto, None) => format!("start: tagged | call | REPLY\n{NOT_A_CALL}"),
        (Choice::Auto, Some(reply)) => format!("start: tagged | call | reply\n{reply}\n"),
        (Choice::Required | Choice::Named(_), _) => "start: tagged | call\n".to_string(),
        (Choice::None, _) => unreachable!("answered above"),
    };
    Grammar {
        lark: format!("{start}{rules}"),
    }
}

/// Any text that does not begin like a call (neither the tag nor a bare JSON object).
const NOT_A_CALL: &str = "REPLY: /[^<{](?s:.)*/\n";

/// Prose that holds no call anywhere: no tag, and no JSON object (a model told to stop
/// calling writes its call after a word or a `>` when only the first character is barred).
const PROSE: &str =
    "PROSE: /[^<{](?s:.)*/ & ~(/(?s:.)*/ (\"<tool_call>\" | /\\{\\s*\"/) /(?s:.)*/)\n";

/// The grammar of an answer that calls nothing: `reply` if the answer has a form of its own
/// (a schema's JSON is not a call: it cannot name a function), otherwise prose with no call
/// in it.
pub fn reply_only(reply: Option<&Grammar>) -> Grammar {
    match reply {
        Some(reply) => reply.clone(),
        None => Grammar {
            lark: format!("start: PROSE\n{PROSE}"),
        },
    }
}

/// A function's parameters as the schema of its `arguments` object (a tool with no
/// parameters takes an empty object).
/// A function's parameters as the grammar enforces them. Arguments the schema does not name are
/// closed off unless it says otherwise (as OpenAI's strict mode does): small models otherwise
/// copy schema keywords such as `"type": "object"` into their calls.
fn arguments_schema(parameters: &Value) -> Value {
    match parameters {
        Value::Object(o) if !o.is_empty() => {
            let mut o = o.clone();
            if o.contains_key("properties") && !o.contains_key("additionalProperties") {
                o.insert("additionalProperties".into(), Value::Bool(false));
            }
            Value::Object(o)
        }
        _ => json!({"type": "object", "properties": {}, "additionalProperties": false}),
    }
}

/// One call read from an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParsedCall {
    pub name: String,
    pub arguments: Value,
}

/// Splits an answer into its text (before the first call, trimmed; `None` if empty) and its
/// calls. A block that does not parse as a call stays part of the text: nothing is dropped.
pub fn parse(answer: &str) -> (Option<String>, Vec<ParsedCall>) {
    let Some(first) = answer.find(TOOL_CALL_OPEN) else {
        if let Some(call) = bare_call(answer) {
            return (None, vec![call]);
        }
        return (non_empty(answer), Vec::new());
    };
    let mut calls = Vec::new();
    let mut rest = &answer[first..];
    while let Some(start) = rest.find(TOOL_CALL_OPEN) {
        let body = &rest[start + TOOL_CALL_OPEN.len()..];
        let Some(end) = body.find(TOOL_CALL_CLOSE) else {
            break;
        };
        match serde_json::from_str::<Value>(body[..end].trim()) {
            Ok(Value::Object(mut o)) => {
                let name = o
                    .remove("name")
                    .and_then(|n| n.as_str().map(str::to_string));
                let arguments = o.remove("arguments").unwrap_or_else(|| json!({}));
                match name {
                    Some(name) => calls.push(ParsedCall { name, arguments }),
                    None => return (non_empty(answer), Vec::new()),
                }
            }
            _ => return (non_empty(answer), Vec::new()),
        }
        rest = &body[end + TOOL_CALL_CLOSE.len()..];
    }
    if calls.is_empty() {
        return (non_empty(answer), calls);
    }
    (non_empty(&answer[..first]), calls)
}

/// A whole answer that is one untagged call object.
fn bare_call(answer: &str) -> Option<ParsedCall> {
    let Value::Object(mut o) = serde_json::from_str::<Value>(answer.trim()).ok()? else {
        return None;
    };
    if o.len() != 2 {
        return None;
    }
    let name = o.remove("name")?.as_str()?.to_string();
    let arguments = o.remove("arguments").filter(Value::is_object)?;
    Some(ParsedCall { name, arguments })
}

fn non_empty(text: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::constrain::tests::accepts;
    use super::*;

    #[test]
    fn calls_are_read_and_the_text_before_them_kept() {
        let (text, calls) = parse(
            "Let me check.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": {}}\n</tool_call>",
        );
        assert_eq!(text.as_deref(), Some("Let me check."));
        assert_eq!(
            calls,
            vec![
                ParsedCall {
                    name: "weather".into(),
                    arguments: json!({"city": "Oslo"})
                },
                ParsedCall {
                    name: "time".into(),
                    arguments: json!({})
                },
            ]
        );
    }

    #[test]
    fn a_broken_call_stays_text() {
        let answer = "<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\"\n</tool_call>";
        assert_eq!(parse(answer), (Some(answer.to_string()), Vec::new()));
        assert_eq!(parse("  plain  "), (Some("plain".into()), Vec::new()));
        // The bare object is a call; other JSON is a reply.
        assert_eq!(
            parse(r#" {"name": "time", "arguments": {"tz": "UTC"}} "#).1,
            vec![ParsedCall {
                name: "time".into(),
                arguments: json!({"tz": "UTC"})
            }]
        );
        assert_eq!(parse(r#"{"name": "x"}"#).1, Vec::new());
    }

    #[test]
    fn the_grammar_names_only_the_chosen_function() {
        let functions = vec![
            Function {
                name: "a".into(),
                parameters: json!({"type": "object", "properties": {"x": {"type": "integer"}}}),
            },
            Function {
                name: "b".into(),
                parameters: Value::Null,
            },
        ];
        let g = grammar(&functions, &Choice::Named("b".into()), false, None);
        assert!(
            !g.lark.contains("REPLY"),
            "a named call cannot be a reply: {}",
            g.lark
        );
        assert!(g.lark.contains(r#""const":"b""#), "{}", g.lark);
        assert!(!g.lark.contains(r#""const":"a""#), "{}", g.lark);
        let g = grammar(&functions, &Choice::Auto, true, None);
        assert!(g.lark.contains("REPLY"), "{}", g.lark);
        assert!(g.lark.contains("anyOf"), "{}", g.lark);
    }

    #[test]
    fn a_turn_that_may_not_call_accepts_prose_and_no_call_anywhere_in_it() {
        let functions = vec![Function {
            name: "calc".into(),
            parameters: json!({"type": "object", "properties": {"e": {"type": "string"}}}),
        }];
        let g = grammar(&functions, &Choice::None, true, None);
        assert!(accepts(&g, "The refund is 49 dollars, back to the card."));
        for call in [
            r#"{"name": "calc", "arguments": {"e": "1+1"}}"#,
            r#">{"name": "calc", "arguments": {"e": "1+1"}}"#,
            "Sure: <tool_call>\n{\"name\": \"calc\"}",
            r#"I will call { "name": "calc" }"#,
        ] {
            assert!(!accepts(&g, call), "{call}");
        }
        // A reply with a form of its own keeps it.
        let one = Grammar::one_of(&["yes".into(), "no".into()]);
        let g = grammar(&functions, &Choice::None, true, Some(&one));
        assert!(accepts(&g, "no") && !accepts(&g, "maybe"));
        // With `auto`, the same words are a call.
        let g = grammar(&functions, &Choice::Auto, true, None);
        assert!(accepts(
            &g,
            r#"{"name": "calc", "arguments": {"e": "1+1"}}"#
        ));
        assert!(!accepts(&g, r#"{"name": "calc", "arguments": {"x": "1"}}"#));
    }
}
