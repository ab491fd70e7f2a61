//! The energy benchmark's data: a suite (workflows with shipped requests, how to score their
//! answers, and their SLO tiers), one row per benchmarked request, and the results file.
//!
//! A benchmark is only worth its provenance, so the suite is plain files a reader can check
//! (`workflows/bench/`), every row says whether it was run or simulated and how its energy was
//! obtained, and quality is scored from shipped answers rather than judged by a model.
//! Running the requests is the binary's job (it owns planning options and backends); this
//! module loads, scores, records and summarises.

pub mod plot;
pub mod summary;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use joule_planner::plan::Plan;
use joule_planner::spec::{StepKind, units};
use joule_planner::template::{self, Reference};
use joule_planner::{CompileContext, Dag, SourceFile, SpecError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::backend::Backend;
use crate::eval::{self, Item, humaneval};
use crate::runtime::Cancel;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{}", .0.first().map_or_else(String::new, ToString::to_string))]
    Spec(Vec<SpecError>),
    #[error("{file}:{line}: {message}")]
    Request {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Suite(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

fn io(path: &Path, e: impl std::fmt::Display) -> BenchError {
    BenchError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

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
        let inputs = crate::runtime::inputs::resolve(&dag.workflow, given)
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

fn accepted(expected: &Value) -> Option<Vec<String>> {
    match expected {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => a.iter().map(|v| v.as_str().map(str::to_string)).collect(),
        _ => None,
    }
}

/// Scores one answer; the text says why it is not 1, when that is known.
pub async fn score(
    kind: ScoreKind,
    expected: &Value,
    answer: &str,
    backend: &dyn Backend,
    cancel: &Cancel,
) -> Result<(f64, String), BenchError> {
    Ok(match kind {
        ScoreKind::Label => {
            let want = expected.as_str().unwrap_or_default();
            if answer.trim().eq_ignore_ascii_case(want.trim()) {
                (1.0, String::new())
            } else {
                (0.0, format!("said {:?}, expected {want}", answer.trim()))
            }
        }
        ScoreKind::TokenF1 => (
            eval::score::token_f1(answer, &accepted(expected).unwrap_or_default()),
            String::new(),
        ),
        ScoreKind::Humaneval => {
            let problem: humaneval::Problem = serde_json::from_value(expected.clone())
                .map_err(|e| BenchError::Suite(format!("not a HumanEval problem: {e}")))?;
            eval::score(&Item::Code(problem), answer, backend, cancel)
                .await
                .map_err(|e| BenchError::Suite(e.to_string()))?
        }
    })
}

/// The quality a plan predicts for a workflow output: the lowest profiled quality among the
/// llm steps it depends on (an answer is as good as the weakest model that shaped it).
pub fn predicted_quality(dag: &Dag, plan: &Plan, output: &str) -> Option<f64> {
    let wf = &dag.workflow;
    let out = wf.outputs.iter().find(|o| o.name == output)?;
    let mut stack: Vec<usize> = template::template_variables(&out.template.source)
        .unwrap_or_default()
        .iter()
        .filter_map(|v| match template::classify(v) {
            Reference::Step(id, _) => wf.steps.iter().position(|s| s.id == id),
            _ => None,
        })
        .collect();
    let mut seen = vec![false; wf.steps.len()];
    let mut quality: Option<f64> = None;
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        if matches!(wf.steps[i].kind, StepKind::Llm(_))
            && let Some(q) = plan.steps.get(i).and_then(|s| s.quality)
        {
            quality = Some(quality.map_or(q, |x: f64| x.min(q)));
        }
        stack.extend(dag.dependencies(i));
    }
    quality
}

/// Who chose each step's model and device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Every llm step on the best-quality model, as a hand-tuned application does.
    Static,
    /// Each step alone on its cheapest config that meets its quality floor.
    Greedy,
    /// joule's MILP over the whole workflow, with re-planning during the run.
    Joule,
}

impl Policy {
    pub const ALL: [Policy; 3] = [Policy::Static, Policy::Greedy, Policy::Joule];

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Static => "static",
            Policy::Greedy => "greedy",
            Policy::Joule => "joule",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// Whether a row was run on real backends or evaluated on the profiles alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Real,
    Simulated,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Real => "real",
            Mode::Simulated => "simulated",
        }
    }
}

/// One benchmarked request: a line of `results.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub mode: Mode,
    pub workflow: String,
    pub tier: String,
    pub slo_s: f64,
    pub policy: Policy,
    /// The request's number within its (workflow, tier, policy), from 0.
    pub request: usize,
    /// The suite request it asked (`id` in the requests file).
    pub input: String,
    /// The run in `runs.db` (empty when simulated).
    pub run_id: String,
    /// `succeeded`, `failed`, `cancelled`.
    pub status: String,
    /// The plan's method: `milp`, `static`, `greedy`, or `best-effort` when no plan met the SLO.
    pub plan: String,
    /// The models the run used, `;`-separated.
    pub models: String,
    pub latency_s: f64,
    pub predicted_latency_s: f64,
    pub slo_met: bool,
    pub energy_j: f64,
    /// `nvml`, `rapl` or `estimate` (every simulated figure is an estimate).
    pub energy_method: String,
    pub predicted_energy_j: f64,
    pub cost_usd: f64,
    /// 0..1, by the workflow's scorer; predicted from profiles when simulated.
    pub quality: f64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub error: String,
}

/// The columns of `results.csv`, in order.
pub const COLUMNS: [&str; 22] = [
    "mode",
    "workflow",
    "tier",
    "slo_s",
    "policy",
    "request",
    "input",
    "run_id",
    "status",
    "plan",
    "models",
    "latency_s",
    "predicted_latency_s",
    "slo_met",
    "energy_j",
    "energy_method",
    "predicted_energy_j",
    "cost_usd",
    "quality",
    "tokens_in",
    "tokens_out",
    "error",
];

/// Reads `results.csv`; a missing file is no rows.
pub fn read_rows(path: &Path) -> Result<Vec<Row>, BenchError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut reader = csv::Reader::from_path(path).map_err(|e| io(path, e))?;
    reader
        .deserialize()
        .enumerate()
        .map(|(i, r)| {
            r.map_err(|e| BenchError::Request {
                file: path.display().to_string(),
                line: i + 2,
                message: format!("not a results row: {e}"),
            })
        })
        .collect()
}

/// Appends rows to `results.csv` as they are measured, so an interrupted benchmark keeps every
/// finished request.
pub struct Results {
    path: PathBuf,
    writer: csv::Writer<std::fs::File>,
    rows: Vec<Row>,
}

impl Results {
    /// Starts `results.csv` in `dir`, keeping the rows of the other mode already there (real
    /// and simulated results sit side by side) and dropping this mode's old ones.
    pub fn create(dir: &Path, mode: Mode) -> Result<Self, BenchError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let path = dir.join("results.csv");
        let kept: Vec<Row> = read_rows(&path)?
            .into_iter()
            .filter(|r| r.mode != mode)
            .collect();
        let file = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
        let mut writer = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(file);
        writer
            .write_record(COLUMNS)
            .and_then(|()| writer.flush().map_err(csv::Error::from))
            .map_err(|e| io(&path, e))?;
        let mut results = Self {
            writer,
            path,
            rows: Vec::new(),
        };
        for r in kept {
            results.push(r)?;
        }
        Ok(results)
    }

    pub fn push(&mut self, row: Row) -> Result<(), BenchError> {
        self.writer
            .serialize(&row)
            .and_then(|()| self.writer.flush().map_err(csv::Error::from))
            .map_err(|e| io(&self.path, e))?;
        self.rows.push(row);
        Ok(())
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
