//! The scheduler: runs a plan's steps as soon as their inputs are ready.
//!
//! One loop owns the run's state (outputs, what is waiting on what) and the sinks; model and
//! tool calls run as tokio tasks that report back over a channel, so no lock guards the run
//! and events reach the store in the order they happened. `value` steps, `when` and
//! `for_each` are evaluated in the loop itself: they are template work measured in
//! microseconds. Each device has a semaphore sized from the catalog (one llm at a time on a
//! CPU or a single-stream GPU), so a fan-out queues instead of thrashing one device.
//!
//! A failed attempt is retried with exponential backoff and full jitter; when a config's
//! attempts are used up, the next-best config the planner allowed for the step is tried; when
//! the run falls behind its SLO, the steps not yet started are planned again with what is
//! left of the budgets. All of these are events.

mod agent;
mod attempt;
pub mod check;
mod energy;
pub mod event;
pub mod inputs;
mod replan;
pub mod scope;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use joule_planner::Dag;
use joule_planner::catalog::Catalog;
use joule_planner::estimate::{HOST_W, Problem};
use joule_planner::plan::Plan;
use joule_planner::profile::Profiles;
use joule_planner::spec::{Kind, Objective, StepKind};
use minijinja::Value;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use attempt::{Done, Shared, Work, run_work};
pub use event::{ConfigRef, Event, Figures, Record, RunStatus, Sink, SinkError, StepStatus};
pub use joule_call::Cancel;
use joule_call::{Backend, Cache, Call, LlmCall, Site, ToolCall};

/// Outputs of an earlier, interrupted run of the same plan: those steps and elements are not
/// run again.
#[derive(Debug, Clone, Default)]
pub struct Prior {
    pub steps: HashMap<String, serde_json::Value>,
    pub elements: HashMap<(String, usize), serde_json::Value>,
    /// What those steps cost when they ran, so a resumed run's report counts them.
    pub figures: HashMap<String, (ConfigRef, Figures, u32)>,
    /// The successful attempts of steps that had not finished, by call site: an agent's loop
    /// takes the calls it already made from here instead of making them again.
    pub calls: crate::recorded::Recording,
    /// What each of those calls cost, so a resumed agent step's totals count the calls it
    /// reuses as its report would have had the run not stopped.
    pub spent: HashMap<Site, Figures>,
}

/// Everything one run needs.
pub struct Job {
    pub run_id: String,
    pub dag: Arc<Dag>,
    pub plan: Plan,
    /// The planner's problem, for fallback configs and re-planning; without it neither happens.
    pub problem: Option<Problem>,
    /// The run's inputs, defaults applied.
    pub inputs: serde_json::Map<String, serde_json::Value>,
    pub prior: Prior,
}

/// How the executor behaves, beyond the plan.
#[derive(Debug, Clone)]
pub struct Options {
    /// Calls each device runs at once; devices not listed take the catalog's `streams`
    /// (1 for a CPU), endpoints their `streams` or 4.
    pub concurrency: HashMap<String, usize>,
    /// Re-plan when the projected end passes the SLO.
    pub replan: bool,
    /// Do not wait between attempts (a replay has nothing to wait for).
    pub no_backoff: bool,
    /// Configs to try for a step, in order, instead of the plan's config and the planner's
    /// fallback: a replay follows the configs the recorded run really used.
    pub configs: HashMap<String, Vec<ConfigRef>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            concurrency: HashMap::new(),
            replan: true,
            no_backoff: false,
            configs: HashMap::new(),
        }
    }
}

/// How one step of a finished run went.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub id: String,
    pub kind: Kind,
    pub status: StepStatus,
    pub config: ConfigRef,
    pub figures: Figures,
    pub attempts: u32,
    pub started_s: Option<f64>,
    pub ended_s: Option<f64>,
    pub resumed: bool,
    pub error: Option<String>,
}

/// One successful model call as it really ran: what calibrating a profile learns from.
#[derive(Debug, Clone, Serialize)]
pub struct Observation {
    /// The step the call belongs to.
    pub step: String,
    pub model: String,
    pub device: String,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Time to first token (prefill, excluding any model load).
    pub ttft_s: Option<f64>,
    pub latency_s: f64,
    /// Model load paid inside `latency_s`.
    pub load_s: f64,
    /// On the last model call of an agent's loop: how many model calls the loop made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turns: Option<u32>,
}

impl Observation {
    /// A model call at `step` on `model` and `device` that ran with figures `f`.
    pub(crate) fn of(step: &str, model: &str, device: &str, f: &Figures) -> Self {
        Self {
            step: step.to_string(),
            model: model.to_string(),
            device: device.to_string(),
            tokens_in: f.tokens_in,
            tokens_out: f.tokens_out,
            ttft_s: f.ttft_s,
            latency_s: f.latency_s,
            load_s: f.load_s,
            turns: None,
        }
    }
}

/// The end of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub run_id: String,
    pub status: RunStatus,
    pub error: Option<String>,
    pub outputs: serde_json::Value,
    pub steps: Vec<StepResult>,
    /// Seconds from start to end.
    pub wall_s: f64,
    pub replans: u32,
    /// Every successful, uncached model call.
    pub observations: Vec<Observation>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Runs plans.
pub struct Executor {
    backend: Arc<dyn Backend>,
    catalog: Arc<Catalog>,
    profiles: Arc<Profiles>,
    options: Options,
    cache: Option<Arc<dyn Cache>>,
}

#[derive(Clone)]
enum Slot {
    Waiting,
    Running,
    Done(Value),
}

impl Executor {
    pub fn new(
        backend: Arc<dyn Backend>,
        catalog: Arc<Catalog>,
        profiles: Arc<Profiles>,
        options: Options,
    ) -> Self {
        Self {
            backend,
            catalog,
            profiles,
            options,
            cache: None,
        }
    }

    /// Answers `cache: true` steps from earlier identical calls (the run store's).
    pub fn with_cache(mut self, cache: Arc<dyn Cache>) -> Self {
        self.cache = Some(cache);
        self
    }

    fn semaphores(&self, job: &Job) -> HashMap<String, Arc<Semaphore>> {
        let mut devices: HashSet<String> =
            job.plan.steps.iter().map(|s| s.device.clone()).collect();
        if let Some(p) = &job.problem {
            for s in &p.steps {
                devices.extend(s.configs.iter().map(|c| c.device.clone()));
            }
        }
        devices.insert(joule_call::HOST.into());
        devices
            .into_iter()
            .map(|d| {
                let n = self
                    .options
                    .concurrency
                    .get(&d)
                    .copied()
                    .unwrap_or_else(|| {
                        if d == joule_call::HOST {
                            std::thread::available_parallelism().map_or(2, |n| n.get())
                        } else if let Some(dev) = self.catalog.device(&d) {
                            dev.streams.max(1) as usize
                        } else if let Some(e) = self.catalog.endpoint(&d) {
                            e.streams.unwrap_or(4).max(1) as usize
                        } else {
                            1
                        }
                    });
                (d, Arc::new(Semaphore::new(n)))
            })
            .collect()
    }

    /// Runs a job to its end. `cancel` stops it cleanly (Ctrl-C): running calls are stopped,
    /// what finished is recorded, and the run ends `cancelled`.
    pub async fn run(
        &self,
        job: Job,
        sinks: &mut [&mut dyn Sink],
        cancel: &Cancel,
    ) -> Result<Outcome, ExecError> {
        let t0 = Instant::now();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let run_cancel = cancel.child();
        let profiles = self.profiles.clone();
        let shared = Arc::new(Shared {
            backend: self.backend.clone(),
            meters: energy::Meters::new(
                t0,
                Box::new(move |device| {
                    profiles
                        .hardware_entries()
                        .filter(|h| h.device == device)
                        .filter_map(|h| h.active_w.as_ref().map(|f| f.value))
                        .fold(None, |m: Option<f64>, w| Some(m.map_or(w, |m| m.max(w))))
                        .unwrap_or(HOST_W)
                }),
            ),
            semaphores: self.semaphores(&job),
            events: tx,
            cancel: run_cancel.clone(),
            catalog: self.catalog.clone(),
            no_backoff: self.options.no_backoff,
            cache: self.cache.clone(),
            seed: t0.elapsed().as_nanos() as u64 ^ u64::from(std::process::id()),
            policy: job.dag.workflow.policy.clone(),
        });
        let mut rec = Recorder {
            run_id: job.run_id.clone(),
            seq: 0,
            t0,
            sinks,
            quiet: false,
        };
        rec.quiet = rec.sinks.is_empty();
        let dag = job.dag.clone();
        let wf = &dag.workflow;
        let mut book = Book::new(&dag, &job.plan);
        let inputs = scope::from_json(&job.inputs);
        let resumed = !job.prior.steps.is_empty() || !job.prior.elements.is_empty();
        if !rec.quiet {
            rec.emit(Event::RunStarted {
                workflow: wf.name.clone(),
                resumed,
                plan: job.plan.to_json(),
                policy: serde_json::to_value(&wf.policy).unwrap_or_default(),
            })?;
        }

        let mut tasks: JoinSet<Done> = JoinSet::new();
        let mut failure: Option<String> = None;
        let mut cancelled = false;
        let mut replans = 0u32;
        let mut observations = Vec::new();
        // Planned end of every step, shifted as re-plans happen.
        let mut planned_end: Vec<f64> = job.plan.steps.iter().map(|s| s.end_s).collect();
        let mut plan_total = job.plan.totals.latency_s;
        let slo = job.plan.budget.latency_s;

        loop {
            while failure.is_none() && !cancelled {
                let Some(i) = book.ready.pop_front() else {
                    break;
                };
                let step = &wf.steps[i];
                let mut scope = scope::Scope::new(inputs.clone());
                for &d in &book.deps[i] {
                    if let Slot::Done(v) = &book.slots[d] {
                        scope.step(&wf.steps[d].id, v.clone());
                    }
                }
                let started = t0.elapsed().as_secs_f64();
                // A step finished in an earlier run is not run again.
                if let Some(prior) = job.prior.steps.get(&step.id) {
                    let out = scope::from_json(prior);
                    let r = &mut book.results[i];
                    r.resumed = true;
                    r.status = if prior.is_null() && step.when.is_some() {
                        StepStatus::Skipped
                    } else {
                        StepStatus::Succeeded
                    };
                    if let Some((config, figures, attempts)) = job.prior.figures.get(&step.id) {
                        (r.config, r.figures, r.attempts) = (config.clone(), *figures, *attempts);
                    }
                    book.complete(&mut rec, wf, i, out, started, true)?;
                    continue;
                }
                if let Some(when) = &step.when {
                    match scope.eval(when) {
                        Ok(v) if !v.is_true() => {
                            rec.emit(Event::StepSkipped {
                                step: step.id.clone(),
                                reason: format!("`when` is false: {}", when.source.trim()),
                            })?;
                            book.results[i].status = StepStatus::Skipped;
                            book.complete(&mut rec, wf, i, Value::from(()), started, false)?;
                            continue;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            failure = Some(book.fail(&mut rec, i, format!("`when`: {e}"))?);
                            continue;
                        }
                    }
                }
                let cap = wf.policy.max_fan_out as usize;
                let items: Option<Vec<Value>> = match &step.for_each {
                    None => None,
                    Some(t) => match scope.eval(t).and_then(|v| {
                        let items = v
                            .try_iter()
                            .map_err(|_| format!("`for_each` gave {v}, which is not a list"))?;
                        // Counted before anything is kept: a flood of items costs no memory.
                        let items: Vec<Value> = items.take(cap + 1).collect();
                        if items.len() > cap {
                            return Err(format!(
                                "`for_each` gave more than {cap} items, the workflow's fan-out cap (`policy.max_fan_out`, at most what the operator policy allows)"
                            ));
                        }
                        Ok(items)
                    }) {
                        Ok(items) => Some(items),
                        Err(e) => {
                            failure = Some(book.fail(&mut rec, i, format!("`for_each`: {e}"))?);
                            continue;
                        }
                    },
                };
                let scopes: Vec<(Option<usize>, scope::Scope)> = match items {
                    None => vec![(None, scope)],
                    Some(items) => items
                        .into_iter()
                        .enumerate()
                        .map(|(k, it)| (Some(k), scope.with_item(it)))
                        .collect(),
                };
                book.elements[i] = vec![None; scopes.len()];
                book.results[i].started_s = Some(started);
                if let StepKind::Value(v) = &step.kind {
                    let mut out = Vec::with_capacity(scopes.len());
                    let mut error = None;
                    for (_, s) in &scopes {
                        match s.value(v) {
                            Ok(v) => out.push(v),
                            Err(e) => {
                                error = Some(e);
                                break;
                            }
                        }
                    }
                    if let Some(e) = error {
                        failure = Some(book.fail(&mut rec, i, e)?);
                        continue;
                    }
                    let value = if step.for_each.is_some() {
                        Value::from(out)
                    } else {
                        out.pop().unwrap_or_default()
                    };
                    book.results[i].status = StepStatus::Succeeded;
                    book.results[i].attempts = 1;
                    book.complete(&mut rec, wf, i, value, started, false)?;
                    continue;
                }
                // A model or tool step: one task per element.
                book.slots[i] = Slot::Running;
                let mut spawned = 0;
                for (index, s) in scopes {
                    if let Some(k) = index
                        && let Some(prior) = job.prior.elements.get(&(step.id.clone(), k))
                    {
                        book.elements[i][k] = Some(prior.clone());
                        continue;
                    }
                    let calls = match self.calls(&job, i, &book.configs[i], &s) {
                        Ok(c) => c,
                        Err(e) => {
                            failure = Some(book.fail(&mut rec, i, e)?);
                            break;
                        }
                    };
                    let work = Work {
                        step: i,
                        site: Site {
                            step: step.id.clone(),
                            index,
                            attempt: 0,
                        },
                        calls,
                        retry: step.retry,
                        backoff_s: step.backoff_s,
                        timeout_s: step.timeout_s,
                        output: match &step.kind {
                            StepKind::Llm(l) => l.output.clone(),
                            _ => None,
                        },
                        cache: step.cache,
                    };
                    let sh = shared.clone();
                    // An agent step's loop replaces the attempts of a plain call site.
                    match self.agent_loop(&job, i, index) {
                        Some(agent) => tasks.spawn(agent::run(sh, work, agent)),
                        None => tasks.spawn(async move { run_work(sh, work).await }),
                    };
                    spawned += 1;
                }
                book.remaining[i] = spawned;
                if spawned == 0 && failure.is_none() {
                    // Every element came from the earlier run.
                    let value = collect(&book.elements[i], step.for_each.is_some());
                    book.results[i].status = StepStatus::Succeeded;
                    book.results[i].resumed = true;
                    book.complete(&mut rec, wf, i, value, started, true)?;
                }
            }
            if failure.is_some() || cancelled {
                run_cancel.cancel();
            }
            if tasks.is_empty() {
                break;
            }
            rec.flush()?;
            tokio::select! {
                Some(ev) = rx.recv() => rec.emit(ev)?,
                Some(joined) = tasks.join_next() => {
                    while let Ok(ev) = rx.try_recv() {
                        rec.emit(ev)?;
                    }
                    let done = match joined {
                        Ok(d) => d,
                        Err(e) => {
                            failure.get_or_insert(format!("a step task failed: {e}"));
                            run_cancel.cancel();
                            continue;
                        }
                    };
                    let i = done.step;
                    observations.extend(done.observations.iter().cloned());
                    let step = &wf.steps[i];
                    let r = &mut book.results[i];
                    r.config = done.config.clone();
                    r.figures.absorb(&done.figures);
                    r.attempts += done.attempts;
                    r.started_s = Some(r.started_s.map_or(done.started_s, |s| s.min(done.started_s)));
                    r.ended_s = Some(r.ended_s.map_or(done.ended_s, |e| e.max(done.ended_s)));
                    book.remaining[i] -= 1;
                    match done.result {
                        Ok(out) => {
                            if let Some(k) = done.index {
                                rec.emit(Event::ElementEnded {
                                    step: step.id.clone(),
                                    index: k,
                                    output: out.clone(),
                                    figures: done.figures,
                                })?;
                                book.elements[i][k] = Some(out);
                            } else {
                                book.elements[i] = vec![Some(out)];
                            }
                            if book.remaining[i] == 0 && r.error.is_none() {
                                r.status = StepStatus::Succeeded;
                                let value = collect(&book.elements[i], step.for_each.is_some());
                                let started = r.started_s.unwrap_or(done.started_s);
                                book.complete(&mut rec, wf, i, value, started, false)?;
                                rec.flush()?;
                                if self.options.replan
                                    && failure.is_none()
                                    && let (Some(slo), Some(problem)) = (slo, &job.problem)
                                {
                                    let elapsed = t0.elapsed().as_secs_f64();
                                    let delay = elapsed - planned_end[i];
                                    let projected = plan_total + delay;
                                    if projected > slo
                                        && let Some(ev) = replan::replan(problem, &book.slots, &mut book.configs, &mut planned_end, &mut plan_total, elapsed, projected, slo)
                                    {
                                        replans += 1;
                                        rec.emit(ev)?;
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            let cancelled_now = run_cancel.is_cancelled() && failure.is_none();
                            r.status = if cancelled_now { StepStatus::Cancelled } else { StepStatus::Failed };
                            let message = match done.index {
                                Some(k) => format!("step `{}` element {k}: {e}", step.id),
                                None => format!("step `{}`: {e}", step.id),
                            };
                            if r.error.is_none() {
                                r.error = Some(message.clone());
                                rec.emit(Event::StepEnded {
                                    step: step.id.clone(),
                                    ok: false,
                                    output: serde_json::Value::Null,
                                    error: Some(message.clone()),
                                    config: r.config.clone(),
                                    figures: r.figures,
                                    attempts: r.attempts,
                                    started_s: r.started_s.unwrap_or(0.0),
                                    ended_s: r.ended_s.unwrap_or(0.0),
                                    resumed: false,
                                })?;
                            }
                            if !cancelled_now && failure.is_none() {
                                failure = Some(message);
                                run_cancel.cancel();
                            }
                        }
                    }
                },
                _ = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    run_cancel.cancel();
                }
            }
        }
        while let Ok(ev) = rx.try_recv() {
            rec.emit(ev)?;
        }
        let status = if failure.is_some() {
            RunStatus::Failed
        } else if cancelled || cancel.is_cancelled() {
            RunStatus::Cancelled
        } else {
            RunStatus::Succeeded
        };
        let outputs = if status == RunStatus::Succeeded {
            self.outputs(&job, &book.slots)
        } else {
            Ok(serde_json::Value::Null)
        };
        let (outputs, failure, status) = match outputs {
            Ok(o) => (o, failure, status),
            Err(e) => (serde_json::Value::Null, Some(e), RunStatus::Failed),
        };
        let error =
            failure.or_else(|| (status == RunStatus::Cancelled).then(|| "cancelled".to_string()));
        rec.emit(Event::RunEnded {
            status,
            outputs: outputs.clone(),
            error: error.clone(),
        })?;
        rec.flush()?;
        Ok(Outcome {
            run_id: job.run_id,
            status,
            error,
            outputs,
            steps: book.results,
            wall_s: t0.elapsed().as_secs_f64(),
            replans,
            observations,
        })
    }

    /// The calls to try for one call site: the config in force, then the step's other configs
    /// from the planner, best first by the workflow's objective.
    fn calls(
        &self,
        job: &Job,
        i: usize,
        config: &ConfigRef,
        scope: &scope::Scope,
    ) -> Result<Vec<Call>, String> {
        let step = &job.dag.workflow.steps[i];
        match &step.kind {
            StepKind::Llm(l) => {
                let prompt = scope
                    .render(&l.prompt)
                    .map_err(|e| format!("prompt: {e}"))?;
                let system = match &l.system {
                    Some(s) => Some(scope.render(s).map_err(|e| format!("system: {e}"))?),
                    None => None,
                };
                let mut configs = vec![config.clone()];
                if let Some(scripted) = self.options.configs.get(&step.id) {
                    configs = scripted.clone();
                } else if let Some(p) = &job.problem {
                    let mut others: Vec<_> = p.steps[i]
                        .configs
                        .iter()
                        .filter(|c| c.model != config.model || c.device != config.device)
                        .collect();
                    let key = |c: &joule_planner::estimate::Config| match p.objective {
                        Objective::Energy => c.energy_j,
                        Objective::Cost => c.cost_usd,
                        Objective::Latency => c.latency_s,
                    };
                    others.sort_by(|a, b| key(a).total_cmp(&key(b)));
                    configs.extend(others.into_iter().take(1).map(|c| ConfigRef {
                        model: c.model.clone(),
                        device: c.device.clone(),
                    }));
                }
                Ok(configs
                    .into_iter()
                    .filter_map(|c| {
                        Some(Call::Llm(LlmCall {
                            model: c.model?,
                            device: c.device,
                            system: system.clone(),
                            prompt: prompt.clone(),
                            max_tokens: l.max_tokens,
                            temperature: l.temperature,
                            seed: 0,
                            turns: Vec::new(),
                            tools: Vec::new(),
                            output: constraint(l.output.as_ref()),
                        }))
                    })
                    .collect())
            }
            StepKind::Tool(t) => {
                let mut args = std::collections::BTreeMap::new();
                for (name, v) in &t.args {
                    let value = scope
                        .value(v)
                        .map_err(|e| format!("argument `{name}`: {e}"))?;
                    args.insert(name.clone(), scope::text(&value));
                }
                let policy = &job.dag.workflow.policy;
                Ok(vec![Call::Tool(ToolCall {
                    network: policy.network.contains(&t.tool.name),
                    sandbox: policy.sandbox.clone(),
                    tool: t.tool.name.clone(),
                    args,
                    timeout_s: step.timeout_s,
                })])
            }
            StepKind::Value(_) => Ok(Vec::new()),
        }
    }

    /// An agent step's loop: its tools as the model is offered them, and what the run being
    /// resumed already did at this call site.
    fn agent_loop(&self, job: &Job, i: usize, index: Option<usize>) -> Option<agent::Loop> {
        let step = &job.dag.workflow.steps[i];
        let StepKind::Llm(l) = &step.kind else {
            return None;
        };
        let a = l.agent.as_ref()?;
        let functions = a
            .tools
            .iter()
            .filter_map(|t| self.catalog.tools.iter().find(|c| c.name == t.name))
            .map(|t| joule_call::Function {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameters(),
            })
            .collect();
        let recorded = job
            .prior
            .calls
            .iter()
            .filter(|(site, _)| site.step == step.id && site.index == index)
            .filter_map(|(site, (call, answer))| {
                let spent = job.prior.spent.get(site).cloned().unwrap_or_default();
                Some((
                    site.attempt,
                    (call.clone(), answer.as_ref().ok()?.clone(), spent),
                ))
            })
            .collect();
        Some(agent::Loop {
            functions,
            max_turns: a.max_turns,
            budget: a.budget,
            recorded,
        })
    }

    fn outputs(&self, job: &Job, slots: &[Slot]) -> Result<serde_json::Value, String> {
        let wf = &job.dag.workflow;
        let mut scope = scope::Scope::new(scope::from_json(&job.inputs));
        for (i, s) in slots.iter().enumerate() {
            if let Slot::Done(v) = s {
                scope.step(&wf.steps[i].id, v.clone());
            }
        }
        let mut out = serde_json::Map::new();
        for o in &wf.outputs {
            let text = scope
                .render(&o.template)
                .map_err(|e| format!("output `{}`: {e}", o.name))?;
            out.insert(o.name.clone(), serde_json::Value::String(text));
        }
        Ok(serde_json::Value::Object(out))
    }
}

/// What the step's `output:` asks of the answer, as the engine enforces it while decoding.
fn constraint(spec: Option<&joule_planner::spec::OutputSpec>) -> Option<joule_call::Constraint> {
    use joule_planner::spec::OutputSpec;
    spec.map(|s| match s {
        OutputSpec::OneOf(v) => joule_call::Constraint::OneOf(v.clone()),
        OutputSpec::JsonSchema(v) => joule_call::Constraint::JsonSchema(v.clone()),
    })
}

/// Numbers and times events, and hands them to every sink.
struct Recorder<'s, 'a> {
    run_id: String,
    seq: u64,
    t0: Instant,
    sinks: &'s mut [&'a mut dyn Sink],
    quiet: bool,
}

impl Recorder<'_, '_> {
    fn emit(&mut self, event: Event) -> Result<(), SinkError> {
        if self.quiet {
            return Ok(());
        }
        // Progress is for displays only; stored events keep consecutive numbers.
        if !matches!(event, Event::Progress { .. }) {
            self.seq += 1;
        }
        let record = Record {
            run_id: self.run_id.clone(),
            seq: self.seq,
            at_s: self.t0.elapsed().as_secs_f64(),
            event,
        };
        for s in self.sinks.iter_mut() {
            s.record(&record)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        for s in self.sinks.iter_mut() {
            s.flush()?;
        }
        Ok(())
    }
}

/// The run's state, owned by the scheduler loop: what each step produced, what is waiting
/// on what, and how each step went.
struct Book {
    slots: Vec<Slot>,
    /// Per step: outputs of finished elements (a step that is not `for_each` has one).
    elements: Vec<Vec<Option<serde_json::Value>>>,
    /// Per step: elements still running.
    remaining: Vec<usize>,
    results: Vec<StepResult>,
    /// The config in force for each step (re-planning changes those not yet started).
    configs: Vec<ConfigRef>,
    deps: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
    /// Per step: dependencies not finished yet.
    waiting: Vec<usize>,
    ready: VecDeque<usize>,
}

impl Book {
    fn new(dag: &Dag, plan: &Plan) -> Self {
        let wf = &dag.workflow;
        let n = wf.steps.len();
        let deps: Vec<Vec<usize>> = (0..n).map(|i| dag.dependencies(i)).collect();
        let mut dependents = vec![Vec::new(); n];
        for (i, d) in deps.iter().enumerate() {
            for &p in d {
                dependents[p].push(i);
            }
        }
        let waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
        let configs: Vec<ConfigRef> = plan
            .steps
            .iter()
            .map(|s| ConfigRef {
                model: s.model.clone(),
                device: s.device.clone(),
            })
            .collect();
        let results = wf
            .steps
            .iter()
            .zip(&configs)
            .map(|(s, c)| StepResult {
                id: s.id.clone(),
                kind: s.kind.kind(),
                status: StepStatus::NotRun,
                config: c.clone(),
                figures: Figures::default(),
                attempts: 0,
                started_s: None,
                ended_s: None,
                resumed: false,
                error: None,
            })
            .collect();
        Self {
            slots: vec![Slot::Waiting; n],
            elements: vec![Vec::new(); n],
            remaining: vec![0; n],
            results,
            configs,
            ready: (0..n).filter(|&i| waiting[i] == 0).collect(),
            deps,
            dependents,
            waiting,
        }
    }

    /// Step `i` finished with `value`: record it and release the steps waiting on it.
    fn complete(
        &mut self,
        rec: &mut Recorder,
        wf: &joule_planner::Workflow,
        i: usize,
        value: Value,
        started: f64,
        resumed: bool,
    ) -> Result<(), SinkError> {
        let r = &mut self.results[i];
        let ended = rec.t0.elapsed().as_secs_f64();
        r.started_s.get_or_insert(started);
        r.ended_s = Some(r.ended_s.map_or(ended, |e: f64| e.max(started)));
        // A resumed step keeps the latency it had when it ran.
        if !resumed {
            r.figures.latency_s = r.ended_s.unwrap_or(ended) - r.started_s.unwrap_or(started);
        }
        if r.config.model.is_none() && r.kind == Kind::Llm {
            r.config = self.configs[i].clone();
        }
        if !rec.quiet {
            rec.emit(Event::StepEnded {
                step: wf.steps[i].id.clone(),
                ok: true,
                output: serde_json::to_value(&value).unwrap_or_default(),
                error: None,
                config: r.config.clone(),
                figures: r.figures,
                attempts: r.attempts,
                started_s: r.started_s.unwrap_or(started),
                ended_s: r.ended_s.unwrap_or(ended),
                resumed,
            })?;
        }
        self.slots[i] = Slot::Done(value);
        for &d in &self.dependents[i] {
            self.waiting[d] -= 1;
            if self.waiting[d] == 0 {
                self.ready.push_back(d);
            }
        }
        Ok(())
    }

    /// Step `i` cannot run (a template or expression failed): record why; the message is the
    /// run's error.
    fn fail(&mut self, rec: &mut Recorder, i: usize, message: String) -> Result<String, SinkError> {
        let r = &mut self.results[i];
        let message = format!("step `{}`: {message}", r.id);
        r.status = StepStatus::Failed;
        r.error = Some(message.clone());
        rec.emit(Event::StepEnded {
            step: r.id.clone(),
            ok: false,
            output: serde_json::Value::Null,
            error: Some(message.clone()),
            config: self.configs[i].clone(),
            figures: r.figures,
            attempts: r.attempts,
            started_s: r.started_s.unwrap_or(0.0),
            ended_s: r.started_s.unwrap_or(0.0),
            resumed: false,
        })?;
        Ok(message)
    }
}

fn collect(elements: &[Option<serde_json::Value>], list: bool) -> Value {
    if list {
        scope::from_json(
            elements
                .iter()
                .map(|e| e.clone().unwrap_or_default())
                .collect::<Vec<_>>(),
        )
    } else {
        scope::from_json(elements.first().cloned().flatten().unwrap_or_default())
    }
}
