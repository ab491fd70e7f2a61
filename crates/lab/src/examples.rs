//! A workflow's examples (`examples:` in its YAML): inputs with the expected values of some
//! outputs, read from JSONL and checked line by line, and the scorers that judge a run's
//! outputs against them. `joule tune` measures step-level quality on them and `joule bench`
//! scores its requests with them, so a workflow is judged one way everywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use joule_call::{Backend, Call, Cancel, LlmCall, OnTokens, Site};
use joule_planner::Dag;
use joule_planner::spec::{Metric, OutputScore};
use serde_json::{Map, Value};

use crate::eval::{self, Item, humaneval};

/// What can be wrong with a workflow's examples, or with scoring against them.
#[derive(Debug, thiserror::Error)]
pub enum ExamplesError {
    /// A line of the examples file, with what to fix.
    #[error("{file}:{line}: {message}")]
    Line {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

fn io(path: &Path, e: impl std::fmt::Display) -> ExamplesError {
    ExamplesError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// One example: a run's inputs and what its scored outputs should be.
#[derive(Debug, Clone)]
pub struct Example {
    pub id: String,
    /// Defaults applied, checked against the workflow's inputs.
    pub inputs: Map<String, Value>,
    /// Scored output name to its expected value.
    pub expected: BTreeMap<String, Value>,
}

/// The examples file a workflow names, relative to the workflow's own file.
pub fn path_of(dag: &Dag, workflow_file: &Path) -> Option<PathBuf> {
    let examples = dag.workflow.examples.as_ref()?;
    let dir = workflow_file.parent().unwrap_or(Path::new(""));
    Some(dir.join(&examples.file))
}

/// The scores a workflow declares; an error naming the file when it declares none.
pub fn scores_of<'a>(
    dag: &'a Dag,
    workflow_file: &Path,
) -> Result<&'a [OutputScore], ExamplesError> {
    dag.workflow
        .examples
        .as_ref()
        .map(|e| e.scores.as_slice())
        .ok_or_else(|| {
            ExamplesError::Invalid(format!(
                "{}: the workflow has no `examples:` (a JSONL file and how its outputs are scored); add one, or pass --examples with a workflow that scores its outputs",
                workflow_file.display()
            ))
        })
}

/// Reads a JSONL file of examples: `{"id", "inputs": {...}, "expected": {...}}` per line.
/// `expected` maps scored outputs to their values; with one scored output it may be that
/// output's value itself. Every line is checked before anything runs, so a bad one fails in
/// a second rather than an hour into a measurement.
pub fn read(path: &Path, dag: &Dag, scores: &[OutputScore]) -> Result<Vec<Example>, ExamplesError> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    let at = |line: usize, message: String| ExamplesError::Line {
        file: path.display().to_string(),
        line,
        message,
    };
    let mut examples: Vec<Example> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| at(n, format!("not JSON: {e}")))?;
        let Value::Object(mut obj) = value else {
            return Err(at(
                n,
                "expected a JSON object with id, inputs and expected".into(),
            ));
        };
        let id = match obj.remove("id") {
            Some(Value::String(s)) => s,
            _ => return Err(at(n, "`id` must be a string".into())),
        };
        if examples.iter().any(|e| e.id == id) {
            return Err(at(n, format!("{id}: the id is used twice")));
        }
        let Some(Value::Object(given)) = obj.remove("inputs") else {
            return Err(at(n, format!("{id}: `inputs` must be an object")));
        };
        let inputs = joule_executor::runtime::inputs::resolve(&dag.workflow, given)
            .map_err(|errors| at(n, format!("{id}: {}", errors.join("; "))))?;
        let raw = obj.remove("expected").unwrap_or(Value::Null);
        let expected = expected(raw, scores).map_err(|e| at(n, format!("{id}: {e}")))?;
        if let Some(k) = obj.keys().next() {
            return Err(at(
                n,
                format!("{id}: unknown key `{k}` (an example has id, inputs, expected)"),
            ));
        }
        examples.push(Example {
            id,
            inputs,
            expected,
        });
    }
    if examples.is_empty() {
        return Err(ExamplesError::Invalid(format!(
            "{}: no examples",
            path.display()
        )));
    }
    Ok(examples)
}

/// The expected values of a run's scored outputs, checked as an example's are: an object
/// keyed by scored outputs, or the bare value when one output is scored.
pub fn expected(
    raw: Value,
    scores: &[OutputScore],
) -> Result<BTreeMap<String, Value>, ExamplesError> {
    let expected = expected_by_output(raw, scores).map_err(ExamplesError::Invalid)?;
    for s in scores {
        if let Some(v) = expected.get(&s.output) {
            check_expected(&s.metric, v)
                .map_err(|m| ExamplesError::Invalid(format!("output `{}`: {m}", s.output)))?;
        }
    }
    Ok(expected)
}

fn expected_by_output(
    raw: Value,
    scores: &[OutputScore],
) -> Result<BTreeMap<String, Value>, String> {
    let names: Vec<&str> = scores.iter().map(|s| s.output.as_str()).collect();
    match raw {
        Value::Object(o) if !o.is_empty() && o.keys().all(|k| names.contains(&k.as_str())) => {
            Ok(o.into_iter().collect())
        }
        Value::Null => Err(format!(
            "`expected` is missing; give the expected value of {}",
            names.join(", ")
        )),
        v if names.len() == 1 => Ok(BTreeMap::from([(names[0].to_string(), v)])),
        _ => Err(format!(
            "`expected` must be an object keyed by the scored outputs ({})",
            names.join(", ")
        )),
    }
}

fn check_expected(metric: &Metric, expected: &Value) -> Result<(), String> {
    match metric {
        Metric::Exact | Metric::Label if expected.is_string() => Ok(()),
        Metric::Exact | Metric::Label => Err("`expected` must be a string".into()),
        Metric::TokenF1 | Metric::RougeL => accepted(expected)
            .filter(|a| !a.is_empty())
            .map(|_| ())
            .ok_or_else(|| "`expected` must be a text or a list of accepted texts".into()),
        Metric::JsonFields { .. } if expected.is_object() => Ok(()),
        Metric::JsonFields { .. } => Err("`expected` must be an object of fields".into()),
        Metric::Tests => serde_json::from_value::<humaneval::Problem>(expected.clone())
            .map(|_| ())
            .map_err(|e| format!("`expected` must be a HumanEval-style problem: {e}")),
        Metric::Judge { .. } => Ok(()),
    }
}

/// The accepted answers of an expected value: a text, or a list of texts.
pub fn accepted(expected: &Value) -> Option<Vec<String>> {
    match expected {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => a.iter().map(|v| v.as_str().map(str::to_string)).collect(),
        _ => None,
    }
}

/// An output as text, the way a scorer reads it.
pub fn text_of(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// Scores a run's outputs against an example: the mean over the scored outputs the example
/// gives (an output the run did not produce scores 0), and why each was not 1.
pub async fn score_outputs(
    scores: &[OutputScore],
    example: &Example,
    outputs: &Value,
    backend: &dyn Backend,
    cancel: &Cancel,
) -> Result<(f64, Vec<String>), ExamplesError> {
    let mut total = 0.0;
    let mut counted = 0usize;
    let mut details = Vec::new();
    for s in scores {
        let Some(expected) = example.expected.get(&s.output) else {
            continue;
        };
        counted += 1;
        let Some(answer) = outputs.get(&s.output) else {
            details.push(format!("{}: not produced", s.output));
            continue;
        };
        let (v, detail) = score(
            &s.metric,
            expected,
            &text_of(answer),
            &example.inputs,
            backend,
            cancel,
        )
        .await?;
        total += v;
        if !detail.is_empty() {
            details.push(format!("{}: {detail}", s.output));
        }
    }
    Ok((total / counted.max(1) as f64, details))
}

/// Scores one answer, 0..1; the text says why it is not 1, when that is known.
pub async fn score(
    metric: &Metric,
    expected: &Value,
    answer: &str,
    inputs: &Map<String, Value>,
    backend: &dyn Backend,
    cancel: &Cancel,
) -> Result<(f64, String), ExamplesError> {
    Ok(match metric {
        Metric::Exact => {
            let want = expected.as_str().unwrap_or_default();
            if answer.trim() == want.trim() {
                (1.0, String::new())
            } else {
                (0.0, format!("said {:?}, expected {want:?}", answer.trim()))
            }
        }
        Metric::Label => {
            let want = expected.as_str().unwrap_or_default();
            if answer.trim().eq_ignore_ascii_case(want.trim()) {
                (1.0, String::new())
            } else {
                (0.0, format!("said {:?}, expected {want}", answer.trim()))
            }
        }
        Metric::TokenF1 => (
            eval::score::token_f1(answer, &accepted(expected).unwrap_or_default()),
            String::new(),
        ),
        Metric::RougeL => {
            let best = accepted(expected)
                .unwrap_or_default()
                .iter()
                .map(|r| eval::score::rouge_l(answer, r))
                .fold(0.0, f64::max);
            (best, String::new())
        }
        Metric::JsonFields { schema } => {
            let schema = schema
                .clone()
                .unwrap_or_else(|| serde_json::json!({"type": "object"}));
            let fields = expected.as_object().cloned().unwrap_or_default();
            eval::score::fields(&schema, &fields, answer)
        }
        Metric::Tests => {
            let problem: humaneval::Problem = serde_json::from_value(expected.clone())
                .map_err(|e| ExamplesError::Invalid(format!("not a HumanEval problem: {e}")))?;
            eval::score(&Item::Code(problem), answer, backend, cancel)
                .await
                .map_err(|e| ExamplesError::Invalid(e.to_string()))?
        }
        Metric::Judge { model, prompt } => {
            judge(
                &model.name,
                &prompt.source,
                expected,
                answer,
                inputs,
                backend,
                cancel,
            )
            .await?
        }
    })
}

/// Asks a judge model to rate an answer from 0 to 10.
async fn judge(
    model: &str,
    prompt: &str,
    expected: &Value,
    answer: &str,
    inputs: &Map<String, Value>,
    backend: &dyn Backend,
    cancel: &Cancel,
) -> Result<(f64, String), ExamplesError> {
    let context = serde_json::json!({
        "answer": answer,
        "expected": expected,
        "inputs": inputs,
    });
    let text = joule_planner::template::environment()
        .render_str(
            prompt,
            minijinja::Value::from(minijinja::value::Serde(&context)),
        )
        .map_err(|e| ExamplesError::Invalid(format!("the judge's prompt: {e}")))?;
    let call = Call::Llm(LlmCall {
        model: model.to_string(),
        device: "cpu".to_string(),
        system: Some(
            "You grade answers. Reply with one integer from 0 (wrong) to 10 (perfect), nothing else."
                .into(),
        ),
        prompt: text,
        max_tokens: 4,
        temperature: 0.0,
        seed: 0,
        turns: Vec::new(),
        tools: Vec::new(),
        // A grade always parses: the engine may only write one of the eleven.
        output: Some(joule_call::Constraint::OneOf(
            (0..=10).map(|g| g.to_string()).collect(),
        )),
    });
    let site = Site {
        step: "judge".into(),
        index: None,
        attempt: 1,
    };
    let quiet: OnTokens = Arc::new(|_| {});
    let reply = backend
        .call(&site, &call, cancel, &quiet)
        .await
        .map_err(|e| ExamplesError::Invalid(format!("the judge {model}: {}", e.message)))?;
    Ok(match rating(&reply.text) {
        Some(r) => (r, String::new()),
        None => (
            0.0,
            format!("the judge gave no rating: {:?}", reply.text.trim()),
        ),
    })
}

/// The first integer 0..=10 in a judge's reply, as 0..1.
fn rating(reply: &str) -> Option<f64> {
    let digits: String = reply
        .trim_start()
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse::<u32>()
        .ok()
        .filter(|&r| r <= 10)
        .map(|r| f64::from(r) / 10.0)
}

/// Indices of the steps the named outputs read, directly or through the steps they read: the
/// only steps whose answers can change those outputs' scores. A template joule cannot see
/// into (a syntax it cannot parse, `steps` read whole) counts every step.
pub fn steps_read_by(dag: &Dag, outputs: &[&str]) -> BTreeSet<usize> {
    use joule_planner::template::{self, Reference};
    let wf = &dag.workflow;
    let every = || (0..wf.steps.len()).collect();
    let mut stack = Vec::new();
    for name in outputs {
        let Some(output) = wf.outputs.iter().find(|o| o.name == *name) else {
            return every();
        };
        let Ok(vars) = template::template_variables(&output.template.source) else {
            return every();
        };
        for var in &vars {
            match template::classify(var) {
                Reference::Step(id, _) => stack.extend(wf.steps.iter().position(|s| s.id == id)),
                Reference::Whole(_) | Reference::Unknown(_) => return every(),
                _ => {}
            }
        }
    }
    let mut seen: BTreeSet<usize> = stack.iter().copied().collect();
    while let Some(i) = stack.pop() {
        for d in dag.dependencies(i) {
            if seen.insert(d) {
                stack.push(d);
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_judges_rating_is_its_first_integer_out_of_ten() {
        assert_eq!(rating("7"), Some(0.7));
        assert_eq!(rating(" Score: 10/10"), Some(1.0));
        assert_eq!(rating("11"), None);
        assert_eq!(rating("great"), None);
    }
}
