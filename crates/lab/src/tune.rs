//! `joule tune`: measures how much each llm step of a workflow can be moved off its reference
//! model without hurting the workflow's own answers.
//!
//! For every example the whole workflow first runs on the reference (each llm step on its
//! best-quality model) and its outputs are scored; then, for each step and each other
//! candidate model, the workflow runs again with that step on that model, reusing the
//! reference run's answers of every step that does not depend on it, so only the step and
//! what follows it run again. The score differences are paired (same example, one step
//! changed), which separates two models with far fewer examples than independent means do.
//! The results become per-(workflow, step, model) figures with n and standard errors in the
//! machine profile, where the planner prefers them to task-level ones.
//!
//! Every finished run is appended to a journal (JSONL, flushed line by line) keyed by what
//! was measured, so an interrupted tune continues where it stopped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use joule_app::{AppError, Assembly};
use joule_call::{Backend, Cancel};
use joule_executor::runtime::{
    Event, Executor, Job, Options, Prior, Record, RunStatus, Sink, SinkError,
};
use joule_planner::Dag;
use joule_planner::estimate::{Environment, Problem};
use joule_planner::figure::Source;
use joule_planner::plan::{self, Plan, Request};
use joule_planner::profile::StepQuality;
use joule_planner::solve::{self, Solution, Stats, Status, Strategy};
use joule_planner::spec::{OutputScore, QualityRule, StepKind};
use serde::{Deserialize, Serialize};

use crate::bench::driver::Watch;
use crate::examples::{self, Example};

/// What one tune measures: the candidates per step, each step's reference, and the runs.
#[derive(Debug, Clone)]
pub struct Design {
    /// llm step id to its reference model.
    pub references: BTreeMap<String, String>,
    /// (step, model) pairs measured against the reference, in workflow order.
    pub cells: Vec<(String, String)>,
    /// (step, model) pairs of steps no scored output reads: their loss is zero by
    /// construction, so they are recorded without running.
    pub free: Vec<(String, String)>,
    /// Steps some scored output reads, directly or through other steps.
    scored: BTreeSet<String>,
    problem: Problem,
    dag: Arc<Dag>,
}

/// Lays out a tune: every llm step's candidate models (those of `models` it may run on here,
/// or all of them) and its reference among them.
pub fn design(
    assembly: &Assembly,
    dag: &Dag,
    env: &Environment,
    models: Option<&[String]>,
    scores: &[OutputScore],
) -> Result<Design, AppError> {
    // Every config the step may run on, measured or not: measuring them is the point.
    let mut dag = dag.clone();
    dag.workflow.quality = QualityRule::Any;
    dag.workflow.budget = Default::default();
    let problem = plan::problem(
        &dag,
        &assembly.catalog,
        &assembly.profiles,
        env,
        &Request::default(),
    );
    if let Some(wanted) = models {
        for m in wanted {
            if assembly.catalog.model(m).is_none() {
                return Err(AppError::invalid(format!(
                    "--models: `{m}` is not in the catalog (see `joule models list`)"
                )));
            }
        }
    }
    let scored = scored_steps(&dag, scores);
    let mut references = BTreeMap::new();
    let mut cells = Vec::new();
    let mut free = Vec::new();
    for (i, step) in dag.workflow.steps.iter().enumerate() {
        let StepKind::Llm(llm) = &step.kind else {
            continue;
        };
        let mut candidates: Vec<&joule_planner::catalog::Model> = Vec::new();
        for c in &problem.steps[i].configs {
            if let Some(m) = c.model.as_ref().and_then(|id| assembly.catalog.model(id))
                && models.is_none_or(|w| w.contains(&m.id))
                && !candidates.iter().any(|x| x.id == m.id)
            {
                candidates.push(m);
            }
        }
        let reference = joule_planner::quality::reference(
            &assembly.profiles,
            &dag.workflow.name,
            &step.id,
            llm.task,
            &candidates,
        )
        .ok_or_else(|| {
            let why = problem.steps[i].excluded.join("; ");
            AppError::invalid(format!(
                "step `{}` has no candidate model here{}",
                step.id,
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {why}")
                }
            ))
        })?;
        for m in &candidates {
            if m.id != reference.id {
                let cell = (step.id.clone(), m.id.clone());
                if scored.contains(&step.id) {
                    cells.push(cell);
                } else {
                    free.push(cell);
                }
            }
        }
        references.insert(step.id.clone(), reference.id.clone());
    }
    if references.is_empty() {
        return Err(AppError::invalid(format!(
            "`{}` has no llm step to tune",
            dag.workflow.name
        )));
    }
    Ok(Design {
        references,
        cells,
        free,
        scored,
        problem,
        dag: Arc::new(dag),
    })
}

impl Design {
    /// Runs the reference (`None`) or the reference with one step changed.
    fn plan(&self, assembly: &Assembly, change: Option<(&str, &str)>) -> Plan {
        let p = &self.problem;
        let assignment: Vec<usize> = p
            .steps
            .iter()
            .map(|s| {
                let want = match change {
                    Some((step, model)) if step == s.id => Some(model),
                    _ => self.references.get(&s.id).map(String::as_str),
                };
                s.configs
                    .iter()
                    .position(|c| want.is_some() && c.model.as_deref() == want)
                    .unwrap_or(0)
            })
            .collect();
        let order: Vec<f64> = (0..p.steps.len()).map(|i| i as f64).collect();
        let (schedule, totals) = solve::evaluate(p, &assignment, &order);
        let solution = Solution {
            objective_value: solve::objective_value(p, &totals),
            assignment,
            schedule,
            totals,
            status: Status::Heuristic,
            stats: Stats {
                solver: "tune".into(),
                ..Stats::default()
            },
        };
        plan::assemble(
            &self.dag,
            p,
            &solution,
            &assembly.profiles,
            Strategy::Static,
        )
    }

    /// Steps a change of `step` must run again: it and what follows it that a scored output
    /// reads. The others keep their reference answers, which no score reads.
    fn rerun(&self, step: &str) -> BTreeSet<String> {
        self.downstream(step)
            .into_iter()
            .filter(|s| self.scored.contains(s))
            .collect()
    }

    /// Steps whose answers a change of `step` can alter: it and everything after it.
    fn downstream(&self, step: &str) -> BTreeSet<String> {
        let wf = &self.dag.workflow;
        let Some(start) = wf.steps.iter().position(|s| s.id == step) else {
            return BTreeSet::new();
        };
        let mut seen = BTreeSet::from([start]);
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            for e in self.dag.edges().filter(|e| e.from == i) {
                if seen.insert(e.to) {
                    stack.push(e.to);
                }
            }
        }
        seen.into_iter().map(|i| wf.steps[i].id.clone()).collect()
    }

    /// What the journal is keyed by: the workflow text, the examples, the references and the
    /// cells. Changing any of them starts a new journal.
    pub fn key(&self, examples_text: &str) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.dag.workflow.source.text().hash(&mut h);
        examples_text.hash(&mut h);
        self.references.hash(&mut h);
        self.cells.hash(&mut h);
        format!("{:016x}", h.finish())
    }
}

/// One finished run, as the journal keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub example: String,
    /// The step changed off its reference, and its model; both absent for the reference run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub score: f64,
    /// The reference run's answers per step, reused by the changed runs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub answers: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A journal's first line: which design it measures.
#[derive(Serialize, Deserialize)]
struct Header {
    tune: String,
}

/// The append-only record of a tune.
pub struct Journal {
    path: PathBuf,
    entries: Vec<Entry>,
}

impl Journal {
    /// Opens (or starts) the journal of the tune whose [`Design::key`] is `key`. Lines that
    /// do not parse (a write cut short by a kill) are dropped, so that run is simply done
    /// again; a journal of another design is refused rather than mixed in.
    pub fn open(path: &Path, key: &str) -> Result<Self, AppError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(AppError::failed(format!("reading {}: {e}", path.display())));
            }
        };
        let mut journal = Self {
            path: path.to_path_buf(),
            entries: Vec::new(),
        };
        let mut lines = text.lines();
        match lines.next().map(serde_json::from_str::<Header>) {
            None => journal.write_line(&Header { tune: key.into() })?,
            Some(Ok(h)) if h.tune == key => {}
            Some(_) => {
                return Err(AppError::invalid(format!(
                    "{} is the journal of another tune (the workflow, its examples, the references or the candidates differ); pass --fresh to start again or another --journal",
                    path.display()
                )));
            }
        }
        journal.entries = lines.filter_map(|l| serde_json::from_str(l).ok()).collect();
        Ok(journal)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    fn find(&self, example: &str, cell: Option<(&str, &str)>) -> Option<&Entry> {
        self.entries.iter().find(|e| {
            e.example == example
                && e.step.as_deref() == cell.map(|c| c.0)
                && e.model.as_deref() == cell.map(|c| c.1)
        })
    }

    fn append(&mut self, entry: Entry) -> Result<(), AppError> {
        self.write_line(&entry)?;
        self.entries.push(entry);
        Ok(())
    }

    /// Appends one line and makes it durable before the next run starts.
    fn write_line(&self, value: &impl Serialize) -> Result<(), AppError> {
        let io =
            |e: std::io::Error| AppError::failed(format!("writing {}: {e}", self.path.display()));
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        let line = serde_json::to_string(value).map_err(|e| AppError::failed(e.to_string()))?;
        writeln!(f, "{line}").map_err(io)?;
        f.sync_data().map_err(io)
    }
}

/// Keeps the answers of the steps that succeeded.
#[derive(Default)]
struct Answers(HashMap<String, serde_json::Value>);

impl Sink for Answers {
    fn record(&mut self, record: &Record) -> Result<(), SinkError> {
        if let Event::StepEnded {
            step,
            ok: true,
            output,
            ..
        } = &record.event
        {
            self.0.insert(step.clone(), output.clone());
        }
        Ok(())
    }
}

/// How a tune went.
pub struct Outcome {
    /// The figures written, one per (step, model), the references included.
    pub figures: Vec<StepQuality>,
    /// Runs made now (the rest came from the journal).
    pub ran: usize,
    /// False when it was interrupted.
    pub finished: bool,
}

/// Runs every (example, cell) the journal does not have yet, then reduces the journal to
/// step-level figures. `cancel` stops it between runs and inside one; what finished is kept.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    assembly: &Assembly,
    design: &Design,
    examples: &[Example],
    scores: &[OutputScore],
    workspace: &Path,
    journal: &mut Journal,
    eval_name: &str,
    watch: &mut dyn Watch,
    cancel: &Cancel,
) -> Result<Outcome, AppError> {
    let locals = assembly.local_backends()?;
    let devices: BTreeSet<&str> = design
        .problem
        .steps
        .iter()
        .flat_map(|s| s.configs.iter().map(|c| c.device.as_str()))
        .collect();
    let router: Arc<dyn Backend> = Arc::new(assembly.router(&locals, workspace, &devices)?);
    let executor = Executor::new(
        router.clone(),
        assembly.catalog.clone(),
        assembly.profiles.clone(),
        Options {
            replan: false,
            ..Options::default()
        },
    );
    let total = (examples.len() * (1 + design.cells.len())) as u64;
    let mut done = 0u64;
    let mut ran = 0usize;
    let cells: Vec<Option<(&str, &str)>> = std::iter::once(None)
        .chain(
            design
                .cells
                .iter()
                .map(|(s, m)| Some((s.as_str(), m.as_str()))),
        )
        .collect();
    for example in examples {
        for &cell in &cells {
            if journal.find(&example.id, cell).is_some() {
                done += 1;
                continue;
            }
            if cancel.is_cancelled() {
                return Ok(reduce(design, journal, eval_name, ran, false));
            }
            let label = match cell {
                None => format!("{} on the reference", example.id),
                Some((s, m)) => format!("{} with {s} on {m}", example.id),
            };
            watch.progress(done, total, &label);
            let prior = match cell {
                None => Prior::default(),
                Some((step, _)) => {
                    let changed = design.rerun(step);
                    let reference = journal.find(&example.id, None);
                    Prior {
                        steps: reference
                            .map(|r| {
                                r.answers
                                    .iter()
                                    .filter(|(s, _)| !changed.contains(*s))
                                    .map(|(s, v)| (s.clone(), v.clone()))
                                    .collect()
                            })
                            .unwrap_or_default(),
                        ..Prior::default()
                    }
                }
            };
            let job = Job {
                run_id: format!("tune-{}-{done}", example.id),
                dag: design.dag.clone(),
                plan: design.plan(assembly, cell),
                problem: None,
                inputs: example.inputs.clone(),
                prior,
            };
            let mut answers = Answers::default();
            let outcome = {
                let mut sinks: Vec<&mut dyn Sink> = vec![&mut answers];
                executor
                    .run(job, &mut sinks, cancel)
                    .await
                    .map_err(|e| AppError::failed(e.to_string()))?
            };
            if outcome.status == RunStatus::Cancelled {
                return Ok(reduce(design, journal, eval_name, ran, false));
            }
            let (score, error) = if outcome.status == RunStatus::Succeeded {
                let (s, details) =
                    examples::score_outputs(scores, example, &outcome.outputs, &*router, cancel)
                        .await
                        .map_err(|e| AppError::failed(format!("scoring {}: {e}", example.id)))?;
                (s, (!details.is_empty()).then(|| details.join("; ")))
            } else {
                (0.0, outcome.error.clone())
            };
            watch.line(&format!(
                "[{:>4}/{total}] {label}: {score:.2}{}",
                done + 1,
                error
                    .as_deref()
                    .map(|e| format!("  ({})", joule_planner::text::escape_controls(e)))
                    .unwrap_or_default()
            ));
            journal.append(Entry {
                example: example.id.clone(),
                step: cell.map(|c| c.0.to_string()),
                model: cell.map(|c| c.1.to_string()),
                score,
                answers: if cell.is_none() {
                    answers.0.into_iter().collect()
                } else {
                    BTreeMap::new()
                },
                error,
            })?;
            done += 1;
            ran += 1;
        }
    }
    watch.progress(done, total, "done");
    Ok(reduce(design, journal, eval_name, ran, true))
}

/// Steps some scored output reads: the only ones whose model can change a score.
fn scored_steps(dag: &Dag, scores: &[OutputScore]) -> BTreeSet<String> {
    let outputs: Vec<&str> = scores.iter().map(|s| s.output.as_str()).collect();
    examples::steps_read_by(dag, &outputs)
        .into_iter()
        .map(|i| dag.workflow.steps[i].id.clone())
        .collect()
}

/// Mean and standard error of the mean.
fn mean_se(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// The journal as step-level figures: for each cell, its mean score and the paired loss
/// against the reference over the examples both have; for each step's reference, the
/// reference runs' mean.
pub fn reduce(
    design: &Design,
    journal: &Journal,
    eval_name: &str,
    ran: usize,
    finished: bool,
) -> Outcome {
    let workflow = &design.dag.workflow.name;
    let reference: BTreeMap<&str, f64> = journal
        .entries()
        .iter()
        .filter(|e| e.step.is_none())
        .map(|e| (e.example.as_str(), e.score))
        .collect();
    let figure =
        |step: &str, model: &str, value: (f64, f64), loss: (f64, f64), n: usize| StepQuality {
            workflow: workflow.clone(),
            step: step.to_string(),
            model: model.to_string(),
            value: round(value.0),
            se: round(value.1),
            n: n as u32,
            reference: design.references[step].clone(),
            loss: round(loss.0),
            loss_se: round(loss.1),
            source: Source::Measured,
            eval: Some(eval_name.to_string()),
        };
    let mut figures = Vec::new();
    // Each step's reference, and every model of a step no scored output reads (it cannot
    // change a score: loss zero, as many pairs as the reference has).
    if !reference.is_empty() {
        let scores: Vec<f64> = reference.values().copied().collect();
        for (step, model) in design
            .references
            .iter()
            .chain(design.free.iter().map(|(s, m)| (s, m)))
        {
            figures.push(figure(
                step,
                model,
                mean_se(&scores),
                (0.0, 0.0),
                scores.len(),
            ));
        }
    }
    for (step, model) in &design.cells {
        let pairs: Vec<(f64, f64)> = journal
            .entries()
            .iter()
            .filter(|e| e.step.as_deref() == Some(step) && e.model.as_deref() == Some(model))
            .filter_map(|e| reference.get(e.example.as_str()).map(|r| (*r, e.score)))
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let values: Vec<f64> = pairs.iter().map(|p| p.1).collect();
        let losses: Vec<f64> = pairs.iter().map(|p| p.0 - p.1).collect();
        figures.push(figure(
            step,
            model,
            mean_se(&values),
            mean_se(&losses),
            pairs.len(),
        ));
    }
    Outcome {
        figures,
        ran,
        finished,
    }
}

fn round(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_error_is_of_the_mean() {
        let (m, se) = mean_se(&[1.0, 0.0, 1.0, 0.0]);
        assert_eq!(m, 0.5);
        assert!((se - (1.0f64 / 3.0 / 4.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_se(&[0.3]), (0.3, 0.0));
    }
}
