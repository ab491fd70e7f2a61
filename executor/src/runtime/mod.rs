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

pub mod check;
mod energy;
pub mod event;
pub mod inputs;
pub mod render;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use joule_planner::Dag;
use joule_planner::catalog::Catalog;
use joule_planner::estimate::{HOST_W, Problem};
use joule_planner::plan::Plan;
use joule_planner::profile::Profiles;
use joule_planner::solve;
use joule_planner::spec::{Objective, OutputSpec, StepKind};
use minijinja::Value;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::backend::{Answer, Backend, Call, CallError, LlmCall, OnTokens, Site, ToolCall};
use crate::meter::Method;
pub use event::{ConfigRef, Event, Figures, Record, RunStatus, Sink, SinkError};

/// A cancellation flag that tasks can both poll (inside blocking inference) and await.
/// A child is cancelled with its parent, not the other way round.
#[derive(Clone, Default)]
pub struct Cancel {
    own: Arc<Flag>,
    parent: Option<Arc<Flag>>,
}

#[derive(Default)]
struct Flag {
    set: AtomicBool,
    notify: Notify,
}

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn child(&self) -> Self {
        Self {
            own: Arc::new(Flag::default()),
            parent: Some(self.own.clone()),
        }
    }

    pub fn cancel(&self) {
        self.own.set.store(true, Ordering::SeqCst);
        self.own.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.own.set.load(Ordering::SeqCst)
            || self
                .parent
                .as_ref()
                .is_some_and(|p| p.set.load(Ordering::SeqCst))
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        loop {
            let own = self.own.notify.notified();
            let parent = self.parent.as_ref().map(|p| p.notify.notified());
            if self.is_cancelled() {
                return;
            }
            match parent {
                Some(p) => {
                    tokio::select! {
                        _ = own => {}
                        _ = p => {}
                    }
                }
                None => own.await,
            }
        }
    }
}

/// Outputs of an earlier, interrupted run of the same plan: those steps and elements are not
/// run again.
#[derive(Debug, Clone, Default)]
pub struct Prior {
    pub steps: HashMap<String, serde_json::Value>,
    pub elements: HashMap<(String, usize), serde_json::Value>,
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
    pub kind: &'static str,
    /// `succeeded`, `skipped`, `failed`, `cancelled` or `not_run`.
    pub status: &'static str,
    pub config: ConfigRef,
    pub figures: Figures,
    pub attempts: u32,
    pub started_s: Option<f64>,
    pub ended_s: Option<f64>,
    pub resumed: bool,
    pub error: Option<String>,
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
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// State shared with the call tasks.
struct Shared {
    backend: Arc<dyn Backend>,
    meters: energy::Meters,
    semaphores: HashMap<String, Arc<Semaphore>>,
    events: mpsc::UnboundedSender<Event>,
    cancel: Cancel,
    catalog: Arc<Catalog>,
    no_backoff: bool,
    seed: u64,
}

/// One call site: a step, or one element of a `for_each` step.
struct Work {
    step: usize,
    site: Site,
    /// Configs to try in order: the planned one, then fallbacks.
    calls: Vec<Call>,
    retry: u32,
    backoff_s: f64,
    timeout_s: Option<f64>,
    output: Option<OutputSpec>,
}

struct Done {
    step: usize,
    index: Option<usize>,
    result: Result<serde_json::Value, String>,
    config: ConfigRef,
    figures: Figures,
    attempts: u32,
    started_s: f64,
    ended_s: f64,
}

/// Runs plans.
pub struct Executor {
    backend: Arc<dyn Backend>,
    catalog: Arc<Catalog>,
    profiles: Arc<Profiles>,
    options: Options,
}

#[derive(Clone)]
enum Slot {
    Waiting,
    Running,
    Done(Value),
}

struct Progress {
    /// Per step: outputs of finished elements (a step that is not `for_each` has one).
    elements: Vec<Vec<Option<serde_json::Value>>>,
    remaining: Vec<usize>,
    results: Vec<StepResult>,
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
        }
    }

    fn semaphores(&self, job: &Job) -> HashMap<String, Arc<Semaphore>> {
        let mut devices: HashSet<String> =
            job.plan.steps.iter().map(|s| s.device.clone()).collect();
        if let Some(p) = &job.problem {
            for s in &p.steps {
                devices.extend(s.configs.iter().map(|c| c.device.clone()));
            }
        }
        devices.insert("host".into());
        devices
            .into_iter()
            .map(|d| {
                let n = self
                    .options
                    .concurrency
                    .get(&d)
                    .copied()
                    .unwrap_or_else(|| {
                        if d == "host" {
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
            seed: t0.elapsed().as_nanos() as u64 ^ u64::from(std::process::id()),
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
        let n = wf.steps.len();
        let deps: Vec<Vec<usize>> = (0..n).map(|i| dag.dependencies(i)).collect();
        let mut dependents = vec![Vec::new(); n];
        let mut waiting: Vec<usize> = vec![0; n];
        for (i, d) in deps.iter().enumerate() {
            waiting[i] = d.len();
            for &p in d {
                dependents[p].push(i);
            }
        }
        let mut configs: Vec<ConfigRef> = job
            .plan
            .steps
            .iter()
            .map(|s| ConfigRef {
                model: s.model.clone(),
                device: s.device.clone(),
            })
            .collect();
        let inputs = render::from_json(&job.inputs);
        let resumed = !job.prior.steps.is_empty() || !job.prior.elements.is_empty();
        if !rec.quiet {
            rec.emit(Event::RunStarted {
                workflow: wf.name.clone(),
                resumed,
                plan: job.plan.to_json(),
            })?;
        }

        let mut slots = vec![Slot::Waiting; n];
        let mut progress = Progress {
            elements: vec![Vec::new(); n],
            remaining: vec![0; n],
            results: wf
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| StepResult {
                    id: s.id.clone(),
                    kind: s.kind.name(),
                    status: "not_run",
                    config: configs[i].clone(),
                    figures: Figures::default(),
                    attempts: 0,
                    started_s: None,
                    ended_s: None,
                    resumed: false,
                    error: None,
                })
                .collect(),
        };
        let mut ready: VecDeque<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let mut failure: Option<String> = None;
        let mut cancelled = false;
        let mut replans = 0u32;
        // Planned end of every step, shifted as re-plans happen.
        let mut planned_end: Vec<f64> = job.plan.steps.iter().map(|s| s.end_s).collect();
        let mut plan_total = job.plan.totals.latency_s;
        let slo = job.plan.budget.latency_s;

        loop {
            while failure.is_none() && !cancelled {
                let Some(i) = ready.pop_front() else { break };
                let step = &wf.steps[i];
                let mut scope = render::Scope::new(inputs.clone());
                for &d in &deps[i] {
                    if let Slot::Done(v) = &slots[d] {
                        scope.step(&wf.steps[d].id, v.clone());
                    }
                }
                let started = t0.elapsed().as_secs_f64();
                // A step finished in an earlier run is not run again.
                if let Some(prior) = job.prior.steps.get(&step.id) {
                    let out = render::from_json(prior);
                    progress.results[i].resumed = true;
                    progress.results[i].status = if prior.is_null() && step.when.is_some() {
                        "skipped"
                    } else {
                        "succeeded"
                    };
                    finish(
                        &mut rec,
                        &mut slots,
                        &mut progress,
                        i,
                        out,
                        started,
                        true,
                        &configs,
                        wf,
                    )?;
                    release(i, &dependents, &mut waiting, &mut ready);
                    continue;
                }
                if let Some(when) = &step.when {
                    match scope.eval(when) {
                        Ok(v) if !v.is_true() => {
                            rec.emit(Event::StepSkipped {
                                step: step.id.clone(),
                                reason: format!("`when` is false: {}", when.source.trim()),
                            })?;
                            progress.results[i].status = "skipped";
                            finish(
                                &mut rec,
                                &mut slots,
                                &mut progress,
                                i,
                                Value::from(()),
                                started,
                                false,
                                &configs,
                                wf,
                            )?;
                            release(i, &dependents, &mut waiting, &mut ready);
                            continue;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            failure = Some(step_error(
                                &mut rec,
                                &mut progress,
                                i,
                                &configs,
                                format!("`when`: {e}"),
                            )?);
                            continue;
                        }
                    }
                }
                let items: Option<Vec<Value>> = match &step.for_each {
                    None => None,
                    Some(t) => match scope.eval(t).and_then(|v| {
                        v.try_iter()
                            .map(|it| it.collect())
                            .map_err(|_| format!("`for_each` gave {v}, which is not a list"))
                    }) {
                        Ok(items) => Some(items),
                        Err(e) => {
                            failure = Some(step_error(
                                &mut rec,
                                &mut progress,
                                i,
                                &configs,
                                format!("`for_each`: {e}"),
                            )?);
                            continue;
                        }
                    },
                };
                let scopes: Vec<(Option<usize>, render::Scope)> = match items {
                    None => vec![(None, scope)],
                    Some(items) => items
                        .into_iter()
                        .enumerate()
                        .map(|(k, it)| (Some(k), scope.with_item(it)))
                        .collect(),
                };
                progress.elements[i] = vec![None; scopes.len()];
                progress.results[i].started_s = Some(started);
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
                        failure = Some(step_error(&mut rec, &mut progress, i, &configs, e)?);
                        continue;
                    }
                    let value = if step.for_each.is_some() {
                        Value::from(out)
                    } else {
                        out.pop().unwrap_or_default()
                    };
                    progress.results[i].status = "succeeded";
                    progress.results[i].attempts = 1;
                    finish(
                        &mut rec,
                        &mut slots,
                        &mut progress,
                        i,
                        value,
                        started,
                        false,
                        &configs,
                        wf,
                    )?;
                    release(i, &dependents, &mut waiting, &mut ready);
                    continue;
                }
                // A model or tool step: one task per element.
                slots[i] = Slot::Running;
                let mut spawned = 0;
                for (index, s) in scopes {
                    if let Some(k) = index
                        && let Some(prior) = job.prior.elements.get(&(step.id.clone(), k))
                    {
                        progress.elements[i][k] = Some(prior.clone());
                        continue;
                    }
                    let calls = match self.calls(&job, i, &configs[i], &s) {
                        Ok(c) => c,
                        Err(e) => {
                            failure = Some(step_error(&mut rec, &mut progress, i, &configs, e)?);
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
                    };
                    let sh = shared.clone();
                    tasks.spawn(async move { run_work(sh, work).await });
                    spawned += 1;
                }
                progress.remaining[i] = spawned;
                if spawned == 0 && failure.is_none() {
                    // Every element came from the earlier run.
                    let value = collect(&progress.elements[i], step.for_each.is_some());
                    progress.results[i].status = "succeeded";
                    progress.results[i].resumed = true;
                    finish(
                        &mut rec,
                        &mut slots,
                        &mut progress,
                        i,
                        value,
                        started,
                        true,
                        &configs,
                        wf,
                    )?;
                    release(i, &dependents, &mut waiting, &mut ready);
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
                    let step = &wf.steps[i];
                    let r = &mut progress.results[i];
                    r.config = done.config.clone();
                    r.figures.absorb(&done.figures);
                    r.attempts += done.attempts;
                    r.started_s = Some(r.started_s.map_or(done.started_s, |s| s.min(done.started_s)));
                    r.ended_s = Some(r.ended_s.map_or(done.ended_s, |e| e.max(done.ended_s)));
                    progress.remaining[i] -= 1;
                    match done.result {
                        Ok(out) => {
                            if let Some(k) = done.index {
                                rec.emit(Event::ElementEnded {
                                    step: step.id.clone(),
                                    index: k,
                                    output: out.clone(),
                                    figures: done.figures,
                                })?;
                                progress.elements[i][k] = Some(out);
                            } else {
                                progress.elements[i] = vec![Some(out)];
                            }
                            if progress.remaining[i] == 0 && r.error.is_none() {
                                r.status = "succeeded";
                                let value = collect(&progress.elements[i], step.for_each.is_some());
                                let started = r.started_s.unwrap_or(done.started_s);
                                finish(&mut rec, &mut slots, &mut progress, i, value, started, false, &configs, wf)?;
                                release(i, &dependents, &mut waiting, &mut ready);
                                rec.flush()?;
                                if self.options.replan
                                    && failure.is_none()
                                    && let (Some(slo), Some(problem)) = (slo, &job.problem)
                                {
                                    let elapsed = t0.elapsed().as_secs_f64();
                                    let delay = elapsed - planned_end[i];
                                    let projected = plan_total + delay;
                                    if projected > slo
                                        && let Some(ev) = replan(problem, &slots, &mut configs, &mut planned_end, &mut plan_total, elapsed, projected, slo)
                                    {
                                        replans += 1;
                                        rec.emit(ev)?;
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            let cancelled_now = run_cancel.is_cancelled() && failure.is_none();
                            r.status = if cancelled_now { "cancelled" } else { "failed" };
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
            self.outputs(&job, &slots)
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
            steps: progress.results,
            wall_s: t0.elapsed().as_secs_f64(),
            replans,
        })
    }

    /// The calls to try for one call site: the config in force, then the step's other configs
    /// from the planner, best first by the workflow's objective.
    fn calls(
        &self,
        job: &Job,
        i: usize,
        config: &ConfigRef,
        scope: &render::Scope,
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
                    args.insert(name.clone(), render::text(&value));
                }
                Ok(vec![Call::Tool(ToolCall {
                    tool: t.tool.name.clone(),
                    args,
                    timeout_s: step.timeout_s,
                })])
            }
            StepKind::Value(_) => Ok(Vec::new()),
        }
    }

    fn outputs(&self, job: &Job, slots: &[Slot]) -> Result<serde_json::Value, String> {
        let wf = &job.dag.workflow;
        let mut scope = render::Scope::new(render::from_json(&job.inputs));
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

fn release(
    i: usize,
    dependents: &[Vec<usize>],
    waiting: &mut [usize],
    ready: &mut VecDeque<usize>,
) {
    for &d in &dependents[i] {
        waiting[d] -= 1;
        if waiting[d] == 0 {
            ready.push_back(d);
        }
    }
}

fn collect(elements: &[Option<serde_json::Value>], list: bool) -> Value {
    if list {
        render::from_json(
            elements
                .iter()
                .map(|e| e.clone().unwrap_or_default())
                .collect::<Vec<_>>(),
        )
    } else {
        render::from_json(elements.first().cloned().flatten().unwrap_or_default())
    }
}

#[allow(clippy::too_many_arguments)]
fn finish(
    rec: &mut Recorder,
    slots: &mut [Slot],
    progress: &mut Progress,
    i: usize,
    value: Value,
    started: f64,
    resumed: bool,
    configs: &[ConfigRef],
    wf: &joule_planner::Workflow,
) -> Result<(), SinkError> {
    let r = &mut progress.results[i];
    let ended = rec.t0.elapsed().as_secs_f64();
    r.started_s.get_or_insert(started);
    r.ended_s = Some(r.ended_s.map_or(ended, |e: f64| e.max(started)));
    r.figures.latency_s = r.ended_s.unwrap_or(ended) - r.started_s.unwrap_or(started);
    if r.config.model.is_none() && r.kind == "llm" {
        r.config = configs[i].clone();
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
    slots[i] = Slot::Done(value);
    Ok(())
}

fn step_error(
    rec: &mut Recorder,
    progress: &mut Progress,
    i: usize,
    configs: &[ConfigRef],
    message: String,
) -> Result<String, SinkError> {
    let r = &mut progress.results[i];
    let message = format!("step `{}`: {message}", r.id);
    r.status = "failed";
    r.error = Some(message.clone());
    rec.emit(Event::StepEnded {
        step: r.id.clone(),
        ok: false,
        output: serde_json::Value::Null,
        error: Some(message.clone()),
        config: configs[i].clone(),
        figures: r.figures,
        attempts: r.attempts,
        started_s: r.started_s.unwrap_or(0.0),
        ended_s: r.started_s.unwrap_or(0.0),
        resumed: false,
    })?;
    Ok(message)
}

/// Plans the steps not yet started again, with the finished and running ones fixed at no
/// further cost and the SLO shortened by the time already spent. Returns the event when the
/// new plan changes something.
#[allow(clippy::too_many_arguments)]
fn replan(
    problem: &Problem,
    slots: &[Slot],
    configs: &mut [ConfigRef],
    planned_end: &mut [f64],
    plan_total: &mut f64,
    elapsed: f64,
    projected: f64,
    slo: f64,
) -> Option<Event> {
    let mut q = problem.clone();
    let mut fixed = 0;
    for (i, s) in q.steps.iter_mut().enumerate() {
        if matches!(slots[i], Slot::Waiting) {
            continue;
        }
        fixed += 1;
        let keep = s
            .configs
            .iter()
            .position(|c| c.model == configs[i].model && c.device == configs[i].device)
            .unwrap_or(0);
        let mut c = s.configs[keep].clone();
        c.latency_s = 0.0;
        c.energy_j = 0.0;
        c.cost_usd = 0.0;
        c.residency = None;
        s.configs = vec![c];
    }
    if fixed == q.steps.len() {
        return None;
    }
    q.budget.latency_s = Some((slo - elapsed).max(0.001));
    // The run waits while this solves: a second is plenty for the steps that are left, and a
    // time-limited answer is still a feasible one.
    let solved = solve::solve(&q, &solve::Options { time_limit_s: 1.0 });
    let (note, changes) = match solved {
        Ok(s) if s.status != solve::Status::Infeasible => {
            let mut changes = Vec::new();
            for (i, step) in q.steps.iter().enumerate() {
                if !matches!(slots[i], Slot::Waiting) {
                    continue;
                }
                let c = &step.configs[s.assignment[i]];
                let new = ConfigRef {
                    model: c.model.clone(),
                    device: c.device.clone(),
                };
                if new != configs[i] {
                    changes.push((step.id.clone(), configs[i].clone(), new.clone()));
                    configs[i] = new;
                }
                planned_end[i] = elapsed + s.schedule.end[i];
            }
            *plan_total = elapsed + s.totals.latency_s;
            if changes.is_empty() {
                (
                    "the current configs are still the best that fit".to_string(),
                    changes,
                )
            } else {
                (
                    format!(
                        "{} step(s) moved to faster or cheaper configs",
                        changes.len()
                    ),
                    changes,
                )
            }
        }
        _ => {
            // Nothing fits what is left of the SLO: keep going, and do not ask again until
            // the run slips further.
            *plan_total = projected;
            (
                "no plan fits what is left of the SLO; continuing as planned".to_string(),
                Vec::new(),
            )
        }
    };
    Some(Event::Replanned {
        elapsed_s: elapsed,
        projected_s: projected,
        slo_s: slo,
        changes,
        note,
    })
}

/// Runs one call site: attempts with backoff on each config in turn.
async fn run_work(sh: Arc<Shared>, w: Work) -> Done {
    let mut attempts = 0u32;
    let mut figures = Figures::default();
    let mut started_s = None;
    let mut last_error = String::from("no config to run on");
    let mut last_config = ConfigRef {
        model: None,
        device: "host".into(),
    };
    let now = |sh: &Shared| sh.meters_now();
    for (k, call) in w.calls.iter().enumerate() {
        let config = config_of(call);
        if k > 0 {
            let _ = sh.events.send(Event::Fallback {
                step: w.site.step.clone(),
                index: w.site.index,
                from: last_config.clone(),
                to: config.clone(),
                reason: last_error.clone(),
            });
        }
        last_config = config.clone();
        for attempt in 1..=w.retry + 1 {
            if sh.cancel.is_cancelled() {
                return done(
                    &w,
                    Err("cancelled".into()),
                    last_config,
                    figures,
                    attempts,
                    started_s,
                    now(&sh),
                );
            }
            let mut call = call.clone();
            if let Call::Llm(c) = &mut call
                && attempt > 1
                && c.temperature == 0.0
            {
                // Greedy decoding would repeat the failed answer; sample instead.
                c.temperature = 0.7;
                c.seed = u64::from(attempt);
            }
            let semaphore = sh.semaphores.get(call.device()).cloned();
            let _permit = match &semaphore {
                Some(s) => tokio::select! {
                    p = s.clone().acquire_owned() => p.ok(),
                    _ = sh.cancel.cancelled() => {
                        return done(&w, Err("cancelled".into()), last_config, figures, attempts, started_s, now(&sh));
                    }
                },
                None => None,
            };
            attempts += 1;
            let begin = now(&sh);
            started_s.get_or_insert(begin);
            let _ = sh.events.send(Event::AttemptStarted {
                step: w.site.step.clone(),
                index: w.site.index,
                attempt: attempts,
                config: config.clone(),
                call: serde_json::to_value(&call).unwrap_or_default(),
            });
            let metered = matches!(call, Call::Llm(_));
            let busy = metered.then(|| sh.meters.begin(call.device()));
            let attempt_cancel = sh.cancel.child();
            let on_tokens: OnTokens = {
                let (events, step, index) = (sh.events.clone(), w.site.step.clone(), w.site.index);
                Arc::new(move |tokens| {
                    let _ = events.send(Event::Progress {
                        step: step.clone(),
                        index,
                        tokens,
                    });
                })
            };
            let site = Site {
                attempt: attempts,
                ..w.site.clone()
            };
            let span = match &call {
                Call::Llm(c) => tracing::info_span!(
                    "gen_ai.chat",
                    gen_ai.operation.name = "chat",
                    gen_ai.request.model = %c.model,
                    gen_ai.usage.input_tokens = tracing::field::Empty,
                    gen_ai.usage.output_tokens = tracing::field::Empty,
                    joule.energy_j = tracing::field::Empty,
                    joule.device = %c.device,
                    joule.step = %w.site.step,
                ),
                Call::Tool(c) => tracing::info_span!(
                    "joule.tool",
                    joule.tool = %c.tool,
                    joule.step = %w.site.step,
                ),
            };
            let result = match w.timeout_s {
                Some(t) if matches!(call, Call::Llm(_)) => {
                    match tokio::time::timeout(
                        Duration::from_secs_f64(t),
                        sh.backend
                            .call(&site, &call, &attempt_cancel, &on_tokens)
                            .instrument(span.clone()),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => {
                            attempt_cancel.cancel();
                            Err(CallError::transient(format!("timed out after {t} s")))
                        }
                    }
                }
                _ => {
                    sh.backend
                        .call(&site, &call, &attempt_cancel, &on_tokens)
                        .instrument(span.clone())
                        .await
                }
            };
            let energy = busy.map(|b| sh.meters.end(b));
            drop(_permit);
            let end = now(&sh);
            let mut f = attempt_figures(&sh, &call, result.as_ref().ok(), energy, end - begin);
            f.latency_s = end - begin;
            figures.absorb(&f);
            span.record("gen_ai.usage.input_tokens", f.tokens_in);
            span.record("gen_ai.usage.output_tokens", f.tokens_out);
            span.record("joule.energy_j", f.energy_j);
            let checked: Result<serde_json::Value, CallError> =
                result.clone().and_then(|a| match (&w.output, &call) {
                    (Some(spec), Call::Llm(_)) => check::check(spec, &a.text)
                        .map_err(|e| CallError::transient(format!("output: {e}"))),
                    (_, Call::Llm(_)) => Ok(serde_json::Value::String(a.text.trim().to_string())),
                    _ => Ok(serde_json::Value::String(a.text.trim_end().to_string())),
                });
            let _ = sh.events.send(Event::AttemptEnded {
                step: w.site.step.clone(),
                index: w.site.index,
                attempt: attempts,
                config: config.clone(),
                ok: checked.is_ok(),
                answer: result.as_ref().ok().cloned(),
                error: checked.as_ref().err().map(|e| e.message.clone()),
                transient: checked.as_ref().err().is_some_and(|e| e.transient),
                figures: f,
            });
            match checked {
                Ok(v) => return done(&w, Ok(v), config, figures, attempts, started_s, end),
                Err(e) => {
                    last_error = e.message.clone();
                    if sh.cancel.is_cancelled() {
                        return done(
                            &w,
                            Err("cancelled".into()),
                            config,
                            figures,
                            attempts,
                            started_s,
                            end,
                        );
                    }
                    if !e.transient {
                        break;
                    }
                    if attempt <= w.retry && !sh.no_backoff {
                        let wait = crate::backend::backoff(
                            Duration::from_secs_f64(w.backoff_s.max(0.0)),
                            Duration::from_secs(30),
                            attempt,
                            sh.seed ^ u64::from(attempts) ^ (w.step as u64) << 32,
                        );
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = sh.cancel.cancelled() => {}
                        }
                    }
                }
            }
        }
    }
    let message = if attempts > 1 {
        format!("{last_error} (after {attempts} attempts)")
    } else {
        last_error
    };
    done(
        &w,
        Err(message),
        last_config,
        figures,
        attempts,
        started_s,
        sh.meters_now(),
    )
}

impl Shared {
    fn meters_now(&self) -> f64 {
        self.meters.elapsed()
    }
}

fn done(
    w: &Work,
    result: Result<serde_json::Value, String>,
    config: ConfigRef,
    figures: Figures,
    attempts: u32,
    started_s: Option<f64>,
    ended_s: f64,
) -> Done {
    Done {
        step: w.step,
        index: w.site.index,
        result,
        config,
        figures,
        attempts,
        started_s: started_s.unwrap_or(ended_s),
        ended_s,
    }
}

fn config_of(call: &Call) -> ConfigRef {
    match call {
        Call::Llm(c) => ConfigRef {
            model: Some(c.model.clone()),
            device: c.device.clone(),
        },
        Call::Tool(_) => ConfigRef {
            model: None,
            device: "host".into(),
        },
    }
}

/// Tokens, energy and cost of one attempt. Energy comes from the device's meter (labelled with
/// its method); a tool's is its CPU time at one busy core's power, labelled `estimate`. Cost is
/// the endpoint's token prices, or for a local device its electricity plus its hourly price.
fn attempt_figures(
    sh: &Shared,
    call: &Call,
    answer: Option<&Answer>,
    energy: Option<crate::meter::Energy>,
    wall_s: f64,
) -> Figures {
    let mut f = Figures {
        latency_s: wall_s,
        ..Figures::default()
    };
    if let Some(a) = answer {
        f.tokens_in = a.tokens_in;
        f.tokens_out = a.tokens_out;
        f.ttft_s = a.ttft_s;
        f.load_s = a.load_s;
    }
    match call {
        Call::Llm(c) => {
            if let Some(e) = energy {
                f.energy_j = e.joules;
                f.energy_method = Some(e.method);
            }
            let electricity = sh.catalog.prices.electricity_usd_per_kwh.value / 3.6e6;
            if let Some(ep) = sh.catalog.endpoint(&c.device) {
                f.cost_usd = f.tokens_in as f64 * ep.usd_per_million_input.value / 1e6
                    + f.tokens_out as f64 * ep.usd_per_million_output.value / 1e6;
            } else {
                let hourly = sh
                    .catalog
                    .device(&c.device)
                    .map_or(0.0, |d| d.usd_per_hour.value);
                f.cost_usd = f.energy_j * electricity + hourly * wall_s / 3600.0;
            }
        }
        Call::Tool(_) => {
            let cpu = answer.and_then(|a| a.cpu_s).unwrap_or(0.0);
            f.energy_j = cpu * HOST_W;
            f.energy_method = Some(Method::Estimate);
            f.cost_usd = f.energy_j * sh.catalog.prices.electricity_usd_per_kwh.value / 3.6e6;
        }
    }
    f
}
