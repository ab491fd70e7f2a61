//! Running a suite: one plan per (workflow, tier, policy), then every request for real (the
//! policies taking turns request by request, so drift in the machine falls on all alike) or
//! evaluated on the profiles alone, each row written to `results.csv` as it is measured, and
//! the summary and plots written at the end (also after Ctrl-C, over what finished).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use joule_app::{AppError, Assembly, RunOptions};
use joule_call::{Backend, Cancel};
use joule_executor::report::Report;
use joule_executor::runtime::{Executor, Job, Options, Prior, RunStatus, Sink};
use joule_executor::store::{NewRun, Store};
use joule_planner::Dag;
use joule_planner::estimate::{Environment, Problem};
use joule_planner::plan::{self, Method, Plan, PlanError, PlannedStep};
use joule_planner::spec::Objective;

use super::summary::{self, Group};
use super::{BenchError, Entry, Mode, Results, Row, Strategy, Suite};
use crate::examples::{self, Example};

/// One (workflow, tier, policy)'s plan, fixed for all its requests.
pub struct Planned {
    pub entry: usize,
    pub tier: String,
    pub slo_s: f64,
    pub policy: Strategy,
    pub plan: Plan,
    /// How the plan was made: `best-effort` when no plan met the tier.
    pub method: Method,
    dag: Arc<Dag>,
    problem: Problem,
}

/// Who watches a benchmark: a progress bar and a line per finished request on a terminal,
/// lines alone in a log.
pub trait Watch: Send {
    /// A line worth keeping (a model loaded, a request finished).
    fn line(&mut self, text: &str);
    /// `done` of `total` requests finished; `label` is what runs next.
    fn progress(&mut self, done: u64, total: u64, label: &str);
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Bench(#[from] BenchError),
    #[error(transparent)]
    App(#[from] AppError),
}

impl From<joule_executor::store::StoreError> for DriverError {
    fn from(e: joule_executor::store::StoreError) -> Self {
        Self::App(e.into())
    }
}

/// What the bench plans for. Every local model is taken as resident: a benchmark measures a
/// service in its steady state, loads once up front (and reports that load separately), so no
/// request is charged for one. A real bench plans only with the models fetched here.
pub fn environment(assembly: &Assembly, mode: Mode) -> Environment {
    let mut env = assembly.environment();
    let present = env.local_models.take().unwrap_or_default();
    let local: Vec<&str> = assembly
        .catalog
        .models
        .iter()
        .filter(|m| m.source.is_some() && (mode == Mode::Simulated || present.contains(&m.id)))
        .map(|m| m.id.as_str())
        .collect();
    if mode == Mode::Real {
        env.local_models = Some(local.iter().map(|m| m.to_string()).collect());
    }
    env.resident = local
        .iter()
        .flat_map(|m| env.devices.iter().map(|d| (m.to_string(), d.clone())))
        .collect();
    env
}

/// Plans every (workflow, tier, policy). Where no plan meets a tier, the fastest one that keeps
/// the quality floors runs, marked `best-effort`, and the SLO column says it was missed.
pub fn plan_all(
    suite: &Suite,
    assembly: &Assembly,
    env: &Environment,
    tiers: &[String],
    policies: &[Strategy],
) -> Result<Vec<Planned>, PlanError> {
    let (catalog, profiles) = (&assembly.catalog, &assembly.profiles);
    let mut out = Vec::new();
    for (i, entry) in suite.entries.iter().enumerate() {
        for tier in tiers {
            let slo_s = entry.slo[tier];
            for &policy in policies {
                let mut request = assembly.planning.request(policy);
                request.slo_s = Some(slo_s);
                let (plan, method) = match plan::plan(&entry.dag, catalog, profiles, env, &request)
                {
                    Ok(p) => {
                        let m = p.method;
                        (p, m)
                    }
                    Err(PlanError::Infeasible(_)) => {
                        let mut fastest = request.clone();
                        fastest.objective = Some(Objective::Latency);
                        fastest.slo_s = Some(f64::MAX);
                        let mut p = plan::plan(&entry.dag, catalog, profiles, env, &fastest)?;
                        p.budget.latency_s = Some(slo_s);
                        (p, Method::BestEffort)
                    }
                    Err(e) => return Err(e),
                };
                let mut dag = entry.dag.clone();
                dag.workflow.budget = plan.budget;
                let problem = plan::problem(&dag, catalog, profiles, env, &request);
                out.push(Planned {
                    entry: i,
                    tier: tier.clone(),
                    slo_s,
                    policy,
                    plan,
                    method,
                    dag: Arc::new(dag),
                    problem,
                });
            }
        }
    }
    Ok(out)
}

/// The models of a plan's llm steps, `;`-separated.
fn plan_models(plan: &Plan) -> String {
    let models: BTreeSet<&str> = plan
        .steps
        .iter()
        .filter_map(|s| s.model.as_deref())
        .collect();
    models.into_iter().collect::<Vec<_>>().join(";")
}

fn tokens(plan: &Plan, f: impl Fn(&PlannedStep) -> f64) -> u64 {
    plan.steps
        .iter()
        .map(|s| f(s) * f64::from(s.calls))
        .sum::<f64>()
        .round() as u64
}

/// Rows from the plans alone: each request is its plan's prediction (the planner does not see
/// input sizes, so a workflow's simulated requests are alike; the scenarios are what vary).
pub fn simulate(
    suite: &Suite,
    planned: &[Planned],
    n: usize,
    results: &mut Results,
) -> Result<(), BenchError> {
    for p in planned {
        let entry = &suite.entries[p.entry];
        let quality =
            super::predicted_quality(&entry.dag, &p.plan, &entry.scored_outputs()).unwrap_or(0.0);
        let t = &p.plan.totals;
        for r in 0..n {
            results.push(Row {
                mode: Mode::Simulated,
                workflow: entry.name().to_string(),
                tier: p.tier.clone(),
                slo_s: p.slo_s,
                policy: p.policy,
                request: r,
                input: entry.requests[r % entry.requests.len()].id.clone(),
                run_id: String::new(),
                status: RunStatus::Succeeded,
                plan: p.method,
                models: plan_models(&p.plan),
                latency_s: t.latency_s,
                predicted_latency_s: t.latency_s,
                slo_met: t.latency_s <= p.slo_s * (1.0 + 1e-9),
                energy_j: t.energy_j,
                energy_method: Some(joule_planner::figure::Meter::Estimate),
                predicted_energy_j: t.energy_j,
                cost_usd: t.cost_usd,
                quality,
                tokens_in: tokens(&p.plan, |s| s.tokens_in),
                tokens_out: tokens(&p.plan, |s| s.tokens_out),
                error: String::new(),
            })?;
        }
    }
    Ok(())
}

/// Runs every request for real, interleaving the policies request by request. Each policy
/// has its own model instances, so its own KV prefix cache: sharing one, the second policy's
/// run of a request found the first one's prompts cached and looked up to 3x faster on an
/// identical plan (document Q&A: 1.3 s against 4.5 s). Every model a policy's plans use is
/// loaded once before the first request (the load is reported in `notes`, charged to no
/// request). Each request is a stored run in `out/runs.db`. Returns false when `cancel`
/// stopped it.
#[allow(clippy::too_many_arguments)]
pub async fn real(
    assembly: &Assembly,
    suite: &Suite,
    planned: &[Planned],
    n: usize,
    out: &Path,
    results: &mut Results,
    notes: &mut Vec<String>,
    watch: &mut dyn Watch,
    cancel: &Cancel,
) -> Result<bool, DriverError> {
    let workspace = std::fs::canonicalize(&suite.dir).unwrap_or_else(|_| suite.dir.clone());
    let mut engines: Vec<(Strategy, Arc<dyn Backend>, Executor)> = Vec::new();
    for p in planned {
        if engines.iter().any(|(s, _, _)| *s == p.policy) {
            continue;
        }
        let policy = p.policy;
        let locals = assembly.local_backends()?;
        let mut used: BTreeSet<(&str, &str)> = BTreeSet::new();
        for p in planned.iter().filter(|p| p.policy == policy) {
            for s in &p.plan.steps {
                if let Some(m) = &s.model {
                    used.insert((m, &s.device));
                }
            }
        }
        for (model, device) in &used {
            if let Some(local) = locals.iter().find(|l| l.device_id() == *device) {
                let (local, id) = (local.clone(), model.to_string());
                let seconds = tokio::task::spawn_blocking(move || local.model(&id).map(|(_, s)| s))
                    .await
                    .map_err(|e| AppError::failed(format!("loading {model}: {e}")))?
                    .map_err(|e| AppError::failed(format!("loading {model} on {device}: {e}")))?;
                let line = format!(
                    "{model} loaded on {device} for {policy} in {seconds:.1} s before the first request (charged to no request)"
                );
                watch.line(&line);
                notes.push(line);
            }
        }
        let devices: BTreeSet<&str> = used.iter().map(|(_, d)| *d).collect();
        let router: Arc<dyn Backend> = Arc::new(assembly.router(&locals, &workspace, &devices)?);
        let executor = Executor::new(
            router.clone(),
            assembly.catalog.clone(),
            assembly.profiles.clone(),
            Options {
                replan: policy == Strategy::Joule,
                ..Options::default()
            },
        );
        engines.push((policy, router, executor));
    }
    let mut store = Store::open(&out.join("runs.db"))?;
    let options = serde_json::to_value(RunOptions {
        planning: assembly.planning.clone(),
        endpoints: assembly.endpoints.clone(),
        workspace,
    })
    .map_err(|e| AppError::failed(e.to_string()))?;

    let total = (n * planned.len()) as u64;
    // Request r of every (workflow, tier) under each policy in turn.
    let mut order: BTreeMap<(usize, &str), Vec<&Planned>> = BTreeMap::new();
    for p in planned {
        order.entry((p.entry, &p.tier)).or_default().push(p);
    }
    let mut done = 0u64;
    for r in 0..n {
        for group in order.values() {
            for p in group {
                if cancel.is_cancelled() {
                    return Ok(false);
                }
                let entry = &suite.entries[p.entry];
                let request = &entry.requests[r % entry.requests.len()];
                watch.progress(
                    done,
                    total,
                    &format!("{} {} {}", entry.name(), p.tier, p.policy),
                );
                let Some((_, router, exec)) = engines.iter().find(|(s, _, _)| *s == p.policy)
                else {
                    continue;
                };
                let Some(row) = one(
                    exec, &mut store, &options, entry, p, r, request, &**router, cancel,
                )
                .await?
                else {
                    return Ok(false);
                };
                if row.status == RunStatus::Succeeded {
                    // A scored request refines the tuned figures it observed.
                    joule_app::profiles::observe_quality(
                        &assembly.settings,
                        &assembly.profiles,
                        entry.name(),
                        &p.plan,
                        row.quality,
                    )?;
                }
                done += 1;
                watch.line(&format!(
                    "[{done:>4}/{total}] {:<24} {:<8} {:<6} {:<14} {:>6.1} s ({}) {:>7.1} J {}  quality {:.2}{}",
                    entry.name(),
                    p.tier,
                    p.policy,
                    request.id,
                    row.latency_s,
                    if row.slo_met { "SLO met" } else { "SLO missed" },
                    row.energy_j,
                    row.energy_method.map_or("-", |m| m.as_str()),
                    row.quality,
                    if row.error.is_empty() {
                        String::new()
                    } else {
                        format!("  error: {}", row.error)
                    }
                ));
                results.push(row)?;
            }
        }
    }
    watch.progress(done, total, "done");
    Ok(true)
}

/// Runs one request, records it in the store, and scores its answer. `None` when cancelled.
#[allow(clippy::too_many_arguments)]
async fn one(
    executor: &Executor,
    store: &mut Store,
    options: &serde_json::Value,
    entry: &Entry,
    p: &Planned,
    r: usize,
    request: &Example,
    scorer: &dyn Backend,
    cancel: &Cancel,
) -> Result<Option<Row>, DriverError> {
    let run_id = store.new_run_id()?;
    store.create_run(&NewRun {
        id: &run_id,
        workflow: entry.name(),
        file: entry.source.name(),
        source: entry.source.text(),
        inputs: &serde_json::Value::Object(request.inputs.clone()),
        plan: &p.plan,
        options,
    })?;
    let job = Job {
        run_id: run_id.clone(),
        dag: p.dag.clone(),
        plan: p.plan.clone(),
        problem: Some(p.problem.clone()),
        inputs: request.inputs.clone(),
        prior: Prior::default(),
    };
    let outcome = {
        let mut sinks: Vec<&mut dyn Sink> = vec![store];
        executor
            .run(job, &mut sinks, cancel)
            .await
            .map_err(|e| AppError::failed(e.to_string()))?
    };
    if outcome.status == RunStatus::Cancelled {
        return Ok(None);
    }
    let report = Report::new(&p.plan, &outcome);
    store.set_report(&run_id, &report)?;
    let (quality, detail) = match outcome.status {
        RunStatus::Succeeded => {
            examples::score_outputs(&entry.scores, request, &outcome.outputs, scorer, cancel)
                .await
                .map_err(|e| AppError::failed(format!("scoring {}: {e}", request.id)))?
        }
        _ => (0.0, Vec::new()),
    };
    let detail = detail.join("; ");
    tracing::debug!(request = %request.id, quality, detail, "scored");
    let succeeded = outcome.status == RunStatus::Succeeded;
    let models: BTreeSet<&str> = report
        .steps
        .iter()
        .filter(|s| s.status == joule_executor::runtime::StepStatus::Succeeded)
        .filter_map(|s| s.model.as_deref())
        .collect();
    Ok(Some(Row {
        mode: Mode::Real,
        workflow: entry.name().to_string(),
        tier: p.tier.clone(),
        slo_s: p.slo_s,
        policy: p.policy,
        request: r,
        input: request.id.clone(),
        run_id,
        status: outcome.status,
        plan: p.method,
        models: models.into_iter().collect::<Vec<_>>().join(";"),
        latency_s: report.totals.latency_s,
        predicted_latency_s: report.totals.predicted_latency_s,
        slo_met: succeeded && report.totals.latency_s <= p.slo_s,
        energy_j: report.totals.energy_j,
        energy_method: report.totals.energy_method,
        predicted_energy_j: report.totals.predicted_energy_j,
        cost_usd: report.totals.cost_usd,
        quality,
        tokens_in: report.steps.iter().map(|s| s.tokens_in).sum(),
        tokens_out: report.steps.iter().map(|s| s.tokens_out).sum(),
        error: report.error.clone().unwrap_or_default(),
    }))
}

/// What a finished (or interrupted) benchmark wrote.
pub struct Written {
    pub markdown: String,
    pub json: serde_json::Value,
    pub plots: Vec<PathBuf>,
}

/// Writes this mode's notes, then `summary.md`, `summary.json` and the plots over every row
/// in `results` (real and simulated rows sit side by side, each mode with its notes).
pub fn write_summary(
    out: &Path,
    suite: &Suite,
    results: &Results,
    mode: Mode,
    notes: &[String],
) -> Result<Written, BenchError> {
    let write =
        |path: &Path, text: &str| std::fs::write(path, text).map_err(|e| super::io(path, e));
    write(
        &out.join(format!("notes-{}.txt", mode.as_str())),
        &(notes.join("\n") + "\n"),
    )?;
    let groups: Vec<Group> = summary::groups(results.rows());
    let notes: Vec<String> = [Mode::Real, Mode::Simulated]
        .iter()
        .filter(|m| results.rows().iter().any(|r| r.mode == **m))
        .filter_map(|m| std::fs::read_to_string(out.join(format!("notes-{}.txt", m.as_str()))).ok())
        .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    let markdown = summary::markdown(&suite.name, &groups, &notes);
    write(&out.join("summary.md"), &markdown)?;
    let json = serde_json::json!({
        "suite": suite.name,
        "notes": notes,
        "groups": groups,
    });
    let pretty = serde_json::to_string_pretty(&json).map_err(|e| super::io(out, e))?;
    write(&out.join("summary.json"), &(pretty + "\n"))?;
    let mut plots = Vec::new();
    for m in [Mode::Real, Mode::Simulated] {
        if !groups.iter().any(|g| g.mode == m) {
            continue;
        }
        let svgs = [
            ("energy", super::plot::energy(&groups, m)),
            (
                "latency-cdf",
                super::plot::latency_cdf(results.rows(), &groups, m),
            ),
            ("energy-quality", super::plot::energy_quality(&groups, m)),
        ];
        for (name, svg) in svgs {
            let path = out.join(format!("{name}-{}.svg", m.as_str()));
            let svg = svg.map_err(|e| BenchError::Suite(format!("plot {name}: {e}")))?;
            write(&path, &svg)?;
            plots.push(path);
        }
    }
    Ok(Written {
        markdown,
        json,
        plots,
    })
}
