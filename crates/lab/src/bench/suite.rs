//! A benchmark suite: workflows with shipped requests, how to score each answer, and SLO
//! tiers; every line is checked when the suite loads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use joule_planner::spec::units;
use joule_planner::{CompileContext, Dag, SourceFile};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::eval::humaneval;

use super::{BenchError, io};

/// How a request's answer is scored against its `expected` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreKind {
    /// The output names the expected label (1 or 0).
    Label,
    /// SQuAD-style token F1 of the output, best over the accepted answers.
    TokenF1,
    /// The output's code passes the HumanEval problem's tests in the sandbox (1 or 0).
    Humaneval,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Score {
    pub kind: ScoreKind,
    /// The workflow output that is scored.
    pub output: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSuite {
    name: String,
    workflows: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    workflow: PathBuf,
    requests: PathBuf,
    score: Score,
    /// Tier name to latency SLO (`30s`, `2m`).
    slo: BTreeMap<String, String>,
}

/// One request: the workflow's inputs and what a right answer is.
#[derive(Debug, Clone)]
pub struct BenchRequest {
    pub id: String,
    pub inputs: Map<String, Value>,
    pub expected: Value,
}

/// One workflow of the suite.
pub struct Entry {
    pub file: PathBuf,
    pub source: SourceFile,
    pub dag: Dag,
    pub requests: Vec<BenchRequest>,
    pub score: Score,
    /// Tier name to SLO seconds.
    pub slo: BTreeMap<String, f64>,
}

impl Entry {
    pub fn name(&self) -> &str {
        &self.dag.workflow.name
    }
}

pub struct Suite {
    pub name: String,
    /// The directory its files are relative to (and the workspace of its tool steps).
    pub dir: PathBuf,
    pub entries: Vec<Entry>,
}

/// The suite manifest's file name inside a suite directory.
pub const MANIFEST: &str = "suite.yaml";

impl Suite {
    /// Loads a suite from its directory (or its manifest), compiling every workflow and
    /// checking every request's inputs and expected answer, so a bad line fails before any
    /// model runs rather than an hour into a benchmark.
    pub fn load(path: &Path, ctx: &CompileContext) -> Result<Self, BenchError> {
        let manifest = if path.is_dir() {
            path.join(MANIFEST)
        } else {
            path.to_path_buf()
        };
        let dir = manifest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let source = joule_planner::spec::read_source(&manifest).map_err(BenchError::Spec)?;
        let raw: RawSuite = joule_planner::spec::from_yaml(&source).map_err(BenchError::Spec)?;
        if raw.workflows.is_empty() {
            return Err(BenchError::Suite(format!(
                "{}: the suite names no workflows",
                manifest.display()
            )));
        }
        let mut entries = Vec::new();
        for e in raw.workflows {
            let file = dir.join(&e.workflow);
            let wf_source = joule_planner::spec::read_source(&file).map_err(BenchError::Spec)?;
            let dag = joule_planner::compile_source(&wf_source, ctx).map_err(BenchError::Spec)?;
            if !dag
                .workflow
                .outputs
                .iter()
                .any(|o| o.name == e.score.output)
            {
                let outputs: Vec<&str> = dag
                    .workflow
                    .outputs
                    .iter()
                    .map(|o| o.name.as_str())
                    .collect();
                return Err(BenchError::Suite(format!(
                    "{}: `{}` scores output `{}`, which the workflow does not have (its outputs: {})",
                    manifest.display(),
                    e.workflow.display(),
                    e.score.output,
                    outputs.join(", ")
                )));
            }
            let mut slo = BTreeMap::new();
            for (tier, text) in &e.slo {
                let s = units::parse_duration(text)
                    .ok()
                    .filter(|s| *s > 0.0)
                    .ok_or_else(|| {
                        BenchError::Suite(format!(
                            "{}: `{}` tier `{tier}`: `{text}` is not a duration above zero (e.g. 30s, 2m)",
                            manifest.display(),
                            e.workflow.display()
                        ))
                    })?;
                slo.insert(tier.clone(), s);
            }
            let requests_path = dir.join(&e.requests);
            let requests = read_requests(&requests_path, &dag, e.score.kind)?;
            entries.push(Entry {
                file,
                source: wf_source,
                dag,
                requests,
                score: e.score,
                slo,
            });
        }
        Ok(Self {
            name: raw.name,
            dir,
            entries,
        })
    }

    /// Checks every workflow has each tier; the error lists the tiers they share.
    pub fn check_tiers(&self, tiers: &[String]) -> Result<(), BenchError> {
        for t in tiers {
            if let Some(e) = self.entries.iter().find(|e| !e.slo.contains_key(t)) {
                let known: Vec<&str> = e.slo.keys().map(String::as_str).collect();
                return Err(BenchError::Suite(format!(
                    "SLO tier `{t}`: workflow `{}` has no such tier; it has {}",
                    e.name(),
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// Reads a `.jsonl` file of requests: `{"id", "inputs": {...}, "expected": ...}` per line.
fn read_requests(path: &Path, dag: &Dag, kind: ScoreKind) -> Result<Vec<BenchRequest>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    let at = |line: usize, message: String| BenchError::Request {
        file: path.display().to_string(),
        line,
        message,
    };
    let mut requests = Vec::new();
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
        let Some(Value::Object(given)) = obj.remove("inputs") else {
            return Err(at(n, format!("{id}: `inputs` must be an object")));
        };
        let inputs = joule_executor::runtime::inputs::resolve(&dag.workflow, given)
            .map_err(|errors| at(n, format!("{id}: {}", errors.join("; "))))?;
        let expected = obj.remove("expected").unwrap_or(Value::Null);
        check_expected(kind, &expected).map_err(|m| at(n, format!("{id}: {m}")))?;
        if let Some(k) = obj.keys().next() {
            return Err(at(
                n,
                format!("{id}: unknown key `{k}` (a request has id, inputs, expected)"),
            ));
        }
        requests.push(BenchRequest {
            id,
            inputs,
            expected,
        });
    }
    if requests.is_empty() {
        return Err(BenchError::Suite(format!(
            "{}: no requests",
            path.display()
        )));
    }
    Ok(requests)
}

fn check_expected(kind: ScoreKind, expected: &Value) -> Result<(), String> {
    match kind {
        ScoreKind::Label if expected.is_string() => Ok(()),
        ScoreKind::Label => Err("`expected` must be the label, a string".into()),
        ScoreKind::TokenF1 => accepted(expected)
            .filter(|a| !a.is_empty())
            .map(|_| ())
            .ok_or_else(|| "`expected` must be an answer or a list of accepted answers".into()),
        ScoreKind::Humaneval => serde_json::from_value::<humaneval::Problem>(expected.clone())
            .map(|_| ())
            .map_err(|e| format!("`expected` must be a HumanEval problem: {e}")),
    }
}

pub(super) fn accepted(expected: &Value) -> Option<Vec<String>> {
    match expected {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => a.iter().map(|v| v.as_str().map(str::to_string)).collect(),
        _ => None,
    }
}
