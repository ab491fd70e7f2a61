//! `joule run`, `joule resume`, `joule replay` and `joule runs`: plan a workflow, run it,
//! report what it cost against what was predicted, and keep the record.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use joule_executor::backend::openai::{OpenAiBackend, RetryPolicy};
use joule_executor::backend::{Backend, Recorded, Router, local::LocalBackend};
use joule_executor::models::ModelStore;
use joule_executor::report::Report;
use joule_executor::runtime::{
    self, Cancel, Event, Executor, Job, Options, Prior, Record, RunStatus, Sink, SinkError,
};
use joule_executor::store::{NewRun, Store};
use joule_executor::trace::Trace;
use joule_planner::catalog::Catalog;
use joule_planner::plan::{self as planner_plan, Plan};
use joule_planner::profile::{ProfileFile, Profiles};
use joule_planner::{Dag, SourceFile};
use miette::{IntoDiagnostic, miette};
use serde::{Deserialize, Serialize};

use crate::plan::Planning;

#[derive(clap::Args)]
pub struct Args {
    /// The workflow file.
    file: PathBuf,
    /// An input, `name=value` (strings as written; other types as JSON). Repeatable.
    #[arg(long = "input", value_name = "NAME=VALUE")]
    input: Vec<String>,
    /// A JSON object of inputs; `--input` overrides its entries.
    #[arg(long = "inputs", value_name = "FILE.json")]
    inputs: Option<PathBuf>,
    #[command(flatten)]
    planning: Planning,
    /// Point a catalog endpoint at another URL, `NAME=URL` (e.g. a `joule serve` on loopback).
    #[arg(long = "endpoint", value_name = "NAME=URL")]
    endpoint: Vec<String>,
    #[command(flatten)]
    output: Output,
}

/// Where a run's record and report go.
#[derive(clap::Args, Clone)]
pub struct Output {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// The run store (default `$JOULE_HOME/runs.db`).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Keep no record (the run cannot be resumed or replayed).
    #[arg(long, conflicts_with = "store")]
    no_store: bool,
    /// Write every event as a JSON line to this file.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Write report.json and timeline.svg into this directory.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Do not fold this run's measured speeds into the machine's calibration profile.
    #[arg(long)]
    no_calibrate: bool,
}

#[derive(clap::Args)]
pub struct ResumeArgs {
    /// The run to finish (`joule runs list` shows them).
    run: String,
    #[command(flatten)]
    output: Output,
}

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The run to replay.
    run: String,
    /// The run store (default `$JOULE_HOME/runs.db`).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct RunsArgs {
    #[command(subcommand)]
    command: RunsCommand,
    /// The run store (default `$JOULE_HOME/runs.db`).
    #[arg(long, global = true)]
    store: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum RunsCommand {
    /// The most recent runs.
    List {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One run: its report, or its events.
    Show {
        run: String,
        /// Print every event instead of the report.
        #[arg(long)]
        events: bool,
    },
}

/// What a stored run needs to be planned and run again the same way.
#[derive(Serialize, Deserialize)]
pub struct Stored {
    pub planning: Planning,
    pub endpoints: Vec<String>,
    pub workspace: PathBuf,
}

fn store_path(p: &Option<PathBuf>) -> PathBuf {
    p.clone().unwrap_or_else(Store::default_path)
}

pub fn run(args: &Args) -> miette::Result<ExitCode> {
    let Some(catalog) = crate::diagnostics::catalog(args.planning.catalog.as_deref()) else {
        return Ok(ExitCode::FAILURE);
    };
    let source = match joule_planner::spec::read_source(&args.file) {
        Ok(s) => s,
        Err(errors) => {
            crate::diagnostics::print(&errors);
            return Ok(ExitCode::FAILURE);
        }
    };
    let Some(ctx) = crate::diagnostics::compile_context(&catalog, args.planning.policy.as_deref())
    else {
        return Ok(ExitCode::FAILURE);
    };
    let dag = match joule_planner::compile_source(&source, &ctx) {
        Ok(d) => d,
        Err(errors) => {
            crate::diagnostics::print(&errors);
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut given = match &args.inputs {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| miette!("--inputs {}: {e}", path.display()))?;
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Object(m)) => m,
                Ok(_) => {
                    return Err(miette!(
                        "--inputs {}: expected a JSON object",
                        path.display()
                    ));
                }
                Err(e) => return Err(miette!("--inputs {}: not JSON: {e}", path.display())),
            }
        }
        None => serde_json::Map::new(),
    };
    for kv in &args.input {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(miette!("--input `{kv}`: expected NAME=VALUE"));
        };
        let value = runtime::inputs::parse_text(&dag.workflow, k.trim(), v)
            .map_err(|e| miette!("--input: {e}"))?;
        given.insert(k.trim().to_string(), value);
    }
    let inputs = match runtime::inputs::resolve(&dag.workflow, given) {
        Ok(i) => i,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let workspace = args
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let stored = Stored {
        planning: args.planning.clone(),
        endpoints: args.endpoint.clone(),
        workspace: std::fs::canonicalize(&workspace).unwrap_or(workspace),
    };
    execute(catalog, &source, dag, inputs, &stored, None, &args.output)
}

pub fn resume(args: &ResumeArgs) -> miette::Result<ExitCode> {
    if args.output.no_store {
        return Err(miette!("resume continues a stored run; drop --no-store"));
    }
    let store = Store::open(&store_path(&args.output.store)).map_err(|e| miette!("{e}"))?;
    let run = store.run(&args.run).map_err(|e| miette!("{e}"))?;
    if run.status == "succeeded" {
        eprintln!(
            "run {} already succeeded; `joule runs show {}` prints its report",
            run.id, run.id
        );
        return Ok(ExitCode::SUCCESS);
    }
    let prior = store.prior(&run.id).map_err(|e| miette!("{e}"))?;
    drop(store);
    let Some(Reloaded {
        stored,
        catalog,
        source,
        dag,
        inputs,
        plan,
    }) = reload(&run)?
    else {
        return Ok(ExitCode::FAILURE);
    };
    let finished = prior.steps.len();
    eprintln!(
        "resuming run {}: {finished} of {} steps already finished",
        run.id,
        dag.workflow.steps.len()
    );
    execute(
        catalog,
        &source,
        dag,
        inputs,
        &stored,
        Some((run.id.clone(), prior, plan)),
        &args.output,
    )
}

/// A stored run, ready to run again: its options, catalog, workflow (as it was), inputs and
/// the plan it started with.
struct Reloaded {
    stored: Stored,
    catalog: Catalog,
    source: SourceFile,
    dag: Dag,
    inputs: serde_json::Map<String, serde_json::Value>,
    plan: Plan,
}

/// Rebuilds a stored run; `None` after printing why its workflow no longer compiles.
fn reload(run: &joule_executor::store::StoredRun) -> miette::Result<Option<Reloaded>> {
    let stored: Stored = serde_json::from_value(run.options.clone())
        .map_err(|e| miette!("run {} has unreadable options: {e}", run.id))?;
    let Some(catalog) = crate::diagnostics::catalog(stored.planning.catalog.as_deref()) else {
        return Ok(None);
    };
    let source = SourceFile::new(run.file.clone(), run.source.clone());
    let Some(ctx) =
        crate::diagnostics::compile_context(&catalog, stored.planning.policy.as_deref())
    else {
        return Ok(None);
    };
    let dag = match joule_planner::compile_source(&source, &ctx) {
        Ok(d) => d,
        Err(errors) => {
            crate::diagnostics::print(&errors);
            return Ok(None);
        }
    };
    let serde_json::Value::Object(inputs) = run.inputs.clone() else {
        return Err(miette!("run {} has unreadable inputs", run.id));
    };
    let plan = stored_plan(&run.plan, &dag)?;
    Ok(Some(Reloaded {
        stored,
        catalog,
        source,
        dag,
        inputs,
        plan,
    }))
}

/// Plans, runs, reports. `resume` continues a stored run.
fn execute(
    catalog: Catalog,
    source: &SourceFile,
    mut dag: Dag,
    inputs: serde_json::Map<String, serde_json::Value>,
    stored: &Stored,
    resume: Option<(String, Prior, Plan)>,
    out: &Output,
) -> miette::Result<ExitCode> {
    let Some(profiles) = stored.planning.profiles() else {
        return Ok(ExitCode::FAILURE);
    };
    stored.planning.apply(&mut dag, &catalog)?;
    let mut catalog = catalog;
    point_endpoints(&mut catalog, &stored.endpoints)?;
    let models = ModelStore::from_env();
    let mut env = stored.planning.environment();
    env.local_models = Some(
        catalog
            .models
            .iter()
            .filter(|m| m.source.is_some() && models.require(m).is_ok())
            .map(|m| m.id.clone())
            .collect::<BTreeSet<_>>(),
    );
    let request = stored.planning.request(None);
    let problem = planner_plan::problem(&dag, &catalog, &profiles, &env, &request);
    // A resumed run keeps the plan it started with; a new one is planned now.
    let plan: Plan = match &resume {
        Some((_, _, stored_plan)) => stored_plan.clone(),
        None => match planner_plan::plan(&dag, &catalog, &profiles, &env, &request) {
            Ok(p) => p,
            Err(e) => {
                crate::plan::print_error(e, out.json)?;
                return Ok(ExitCode::FAILURE);
            }
        },
    };
    // The report compares against the SLO the run was held to.
    dag.workflow.budget = plan.budget;
    if !out.json && resume.is_none() {
        print!("{}", plan.to_text());
        println!();
    }
    let catalog = Arc::new(catalog);
    let backend = router(&catalog, &plan, stored)?;

    let mut store = if out.no_store {
        None
    } else {
        Some(Store::open(&store_path(&out.store)).map_err(|e| miette!("{e}"))?)
    };
    let (run_id, prior) = match resume {
        Some((id, prior, _)) => {
            if let Some(s) = &mut store {
                s.reopen_run(&id).map_err(|e| miette!("{e}"))?;
            }
            (id, prior)
        }
        None => {
            let id = match &store {
                Some(s) => s.new_run_id().map_err(|e| miette!("{e}"))?,
                None => format!("mem-{}", std::process::id()),
            };
            if let Some(s) = &mut store {
                s.create_run(&NewRun {
                    id: &id,
                    workflow: &dag.workflow.name,
                    file: source.name(),
                    source: source.text(),
                    inputs: &serde_json::Value::Object(inputs.clone()),
                    plan: &plan.to_json(),
                    options: &serde_json::to_value(stored).into_diagnostic()?,
                })
                .map_err(|e| miette!("{e}"))?;
            }
            (id, Prior::default())
        }
    };
    let mut trace = match &out.trace {
        Some(p) => Some(Trace::create(p).map_err(|e| miette!("--trace {}: {e}", p.display()))?),
        None => None,
    };
    let mut display = Display::new(!out.json);
    let job = Job {
        run_id: run_id.clone(),
        dag: Arc::new(dag),
        plan: plan.clone(),
        problem: Some(problem),
        inputs,
        prior,
    };
    let profiles_used = Arc::new(profiles);
    let mut executor = Executor::new(
        Arc::new(backend),
        catalog.clone(),
        profiles_used.clone(),
        Options::default(),
    );
    if let Some(s) = &store {
        executor = executor.with_cache(Arc::new(s.cache().map_err(|e| miette!("{e}"))?));
    }
    let cancel = Cancel::new();
    let outcome = crate::runtime()?.block_on(async {
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ninterrupted: stopping running steps and recording what finished");
                on_signal.cancel();
            }
        });
        let mut sinks: Vec<&mut dyn Sink> = vec![&mut display];
        if let Some(s) = &mut store {
            sinks.push(s);
        }
        if let Some(t) = &mut trace {
            sinks.push(t);
        }
        executor.run(job, &mut sinks, &cancel).await
    });
    let outcome = outcome.map_err(|e| miette!("{e}"))?;
    display.finish();
    let report = Report::new(&plan, &outcome);
    if !out.no_calibrate && !outcome.observations.is_empty() {
        calibrate(&profiles_used, &plan.workflow, &outcome.observations);
    }
    if let Some(s) = &mut store {
        s.set_report(&run_id, &report.to_json())
            .map_err(|e| miette!("{e}"))?;
    }
    if let Some(dir) = &out.report {
        report
            .write(dir)
            .map_err(|e| miette!("--report {}: {e}", dir.display()))?;
    }
    if out.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
        if outcome.status == RunStatus::Succeeded {
            println!("\noutputs:");
            if let serde_json::Value::Object(o) = &outcome.outputs {
                for (k, v) in o {
                    println!(
                        "  {k}: {}",
                        v.as_str().map_or(v.to_string(), str::to_string)
                    );
                }
            }
        }
        if let Some(dir) = &out.report {
            println!(
                "wrote {} and {}",
                dir.join("report.json").display(),
                dir.join("timeline.svg").display()
            );
        }
        if outcome.status != RunStatus::Succeeded && store.is_some() {
            eprintln!("finish it with `joule resume {run_id}`");
        }
    }
    Ok(match outcome.status {
        RunStatus::Succeeded => ExitCode::SUCCESS,
        RunStatus::Cancelled => ExitCode::from(130),
        _ => ExitCode::FAILURE,
    })
}

/// Folds a run's measured speeds into the machine's calibration profile, so the next plan
/// predicts better. A failure here costs the run nothing: it is reported and skipped.
fn calibrate(
    used: &Profiles,
    workflow: &str,
    observations: &[joule_executor::runtime::Observation],
) {
    let path = crate::plan::profiles_dir().join(crate::plan::CALIBRATION);
    let mut file = match Profiles::load(&path) {
        Ok(f) => f,
        Err(_) if !path.exists() => ProfileFile {
            name: "calibration".into(),
            ..ProfileFile::default()
        },
        Err(errors) => {
            crate::diagnostics::print(&errors);
            eprintln!("not calibrating: {} is not a profile", path.display());
            return;
        }
    };
    let changed = joule_executor::profiler::calibrate(used, &mut file, workflow, observations);
    let header = "Kept up to date by `joule run`: measured speeds of this machine's model calls and the token counts of workflow steps, as bounded moving estimates.";
    match crate::profile::write(&path, &file, header) {
        Ok(()) => {
            tracing::info!(figures = changed, path = %path.display(), "calibrated the machine profile")
        }
        Err(e) => eprintln!("not calibrating: {e:?}"),
    }
}

/// Applies `--endpoint NAME=URL` overrides to the catalog's endpoints.
pub fn point_endpoints(catalog: &mut Catalog, endpoints: &[String]) -> miette::Result<()> {
    for e in endpoints {
        let Some((name, url)) = e.split_once('=') else {
            return Err(miette!("--endpoint `{e}`: expected NAME=URL"));
        };
        let Some(endpoint) = catalog.endpoints.iter_mut().find(|x| x.name == name) else {
            return Err(miette!("--endpoint: the catalog has no endpoint `{name}`"));
        };
        endpoint.base_url = url.to_string();
    }
    Ok(())
}

/// The backends a plan needs: local inference on the devices it uses, the endpoints it (or a
/// fallback) may call, and tools.
fn router(catalog: &Arc<Catalog>, plan: &Plan, stored: &Stored) -> miette::Result<Router> {
    let used: BTreeSet<&str> = plan.steps.iter().map(|s| s.device.as_str()).collect();
    backends(
        catalog,
        &local_backends(catalog, &stored.planning)?,
        &stored.workspace,
        &used,
    )
}

/// A local backend for every device planned for; each keeps its models loaded between runs.
pub fn local_backends(
    catalog: &Arc<Catalog>,
    planning: &Planning,
) -> miette::Result<Vec<Arc<LocalBackend>>> {
    planning
        .environment()
        .devices
        .iter()
        .map(|d| {
            LocalBackend::new(catalog.clone(), ModelStore::from_env(), Some(d), u64::MAX)
                .map(Arc::new)
                .map_err(|e| miette!("{e}"))
        })
        .collect()
}

/// The router over `locals`, every endpoint that can be reached (an endpoint in `used` must
/// be), and tools run in `workspace`.
pub fn backends(
    catalog: &Arc<Catalog>,
    locals: &[Arc<LocalBackend>],
    workspace: &Path,
    used: &BTreeSet<&str>,
) -> miette::Result<Router> {
    let mut router = Router::new(catalog.clone(), workspace.to_path_buf());
    for local in locals {
        router = router.with_local(local.clone());
    }
    for e in &catalog.endpoints {
        match OpenAiBackend::new(&e.base_url, Some(&e.api_key_env), RetryPolicy::default()) {
            Ok(b) => router = router.with_endpoint(&e.name, b),
            Err(err) if used.contains(e.name.as_str()) => {
                return Err(miette!("endpoint `{}`: {err}", e.name));
            }
            Err(_) => {}
        }
    }
    Ok(router)
}

pub fn replay(args: &ReplayArgs) -> miette::Result<ExitCode> {
    let store = Store::open(&store_path(&args.store)).map_err(|e| miette!("{e}"))?;
    let run = store.run(&args.run).map_err(|e| miette!("{e}"))?;
    if run.status != "succeeded" {
        return Err(miette!(
            "run {} {}; only a finished run can be replayed (`joule resume {}` first)",
            run.id,
            run.status,
            run.id
        ));
    }
    let recorded = store.recorded(&run.id).map_err(|e| miette!("{e}"))?;
    let Some(Reloaded {
        stored,
        catalog,
        dag,
        inputs,
        plan,
        ..
    }) = reload(&run)?
    else {
        return Ok(ExitCode::FAILURE);
    };
    let calls = recorded.len();
    let recorded = Recorded { answers: recorded };
    let configs = recorded.configs();
    let backend: Arc<dyn Backend> = Arc::new(recorded);
    let Some(profiles) = stored.planning.profiles() else {
        return Ok(ExitCode::FAILURE);
    };
    let executor = Executor::new(
        backend,
        Arc::new(catalog),
        Arc::new(profiles),
        Options {
            replan: false,
            no_backoff: true,
            configs,
            ..Options::default()
        },
    );
    let job = Job {
        run_id: format!("replay-of-{}", run.id),
        dag: Arc::new(dag),
        plan,
        problem: None,
        inputs,
        prior: Prior::default(),
    };
    let outcome = crate::runtime()?
        .block_on(executor.run(job, &mut [], &Cancel::new()))
        .map_err(|e| miette!("{e}"))?;
    let original = run.outputs.unwrap_or_default();
    let reproduced = outcome.status == RunStatus::Succeeded && outcome.outputs == original;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "run_id": run.id,
                "reproduced": reproduced,
                "recorded_calls": calls,
                "status": outcome.status,
                "error": outcome.error,
                "outputs": outcome.outputs,
                "recorded_outputs": original,
            })
        );
    } else if reproduced {
        println!(
            "replayed run {} from {calls} recorded calls: every prompt and output reproduced",
            run.id
        );
    } else {
        eprintln!(
            "replay of run {} did NOT reproduce it: {}",
            run.id,
            outcome.error.clone().unwrap_or_else(|| format!(
                "outputs differ: recorded {original}, replayed {}",
                outcome.outputs
            ))
        );
    }
    Ok(if reproduced {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A stored plan back in the planner's type: the configs, schedule and predictions the run
/// started with, so a resume runs (and reports against) the same plan, and a replay sends every
/// call where the run did.
fn stored_plan(plan: &serde_json::Value, dag: &Dag) -> miette::Result<Plan> {
    let mut p = planner_plan::empty(&dag.workflow);
    let steps = plan["steps"]
        .as_array()
        .filter(|s| s.len() == p.steps.len())
        .ok_or_else(|| miette!("the stored plan does not match the workflow's steps"))?;
    let num = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    for (planned, stored) in p.steps.iter_mut().zip(steps) {
        planned.model = stored["model"].as_str().map(str::to_string);
        if let Some(d) = stored["device"].as_str() {
            planned.device = d.to_string();
        }
        planned.start_s = num(stored, "start_s");
        planned.end_s = num(stored, "end_s");
        planned.latency_s = planned.end_s - planned.start_s;
        planned.energy_j = num(stored, "energy_j");
        planned.cost_usd = num(stored, "cost_usd");
        planned.tokens_in = num(stored, "tokens_in");
        planned.tokens_out = num(stored, "tokens_out");
    }
    let totals = &plan["totals"];
    p.totals.latency_s = num(totals, "latency_s");
    p.totals.energy_j = num(totals, "energy_j");
    p.totals.cost_usd = num(totals, "cost_usd");
    let budget = &plan["budget"];
    p.budget.latency_s = budget["latency_s"].as_f64();
    p.budget.energy_j = budget["energy_j"].as_f64();
    p.budget.cost_usd = budget["cost_usd"].as_f64();
    p.method = plan["method"].as_str().unwrap_or("stored").to_string();
    Ok(p)
}

pub fn runs(args: &RunsArgs) -> miette::Result<ExitCode> {
    let path = store_path(&args.store);
    if !path.exists() {
        return Err(miette!(
            "no run store at {}; `joule run` creates it",
            path.display()
        ));
    }
    let store = Store::open(&path).map_err(|e| miette!("{e}"))?;
    match &args.command {
        RunsCommand::List { limit } => {
            let runs = store.list(*limit).map_err(|e| miette!("{e}"))?;
            if args.json {
                println!("{}", serde_json::to_string(&runs).into_diagnostic()?);
            } else if runs.is_empty() {
                println!("no runs in {}", path.display());
            } else {
                println!(
                    "{:22}  {:20}  {:10}  {:20}  {:>5}  {:>10}  {:>10}",
                    "run", "workflow", "status", "started (UTC)", "steps", "energy J", "cost $"
                );
                for r in runs {
                    println!(
                        "{:22}  {:20}  {:10}  {:20}  {:>5}  {:>10.1}  {:>10.6}",
                        r.id,
                        r.workflow,
                        r.status,
                        r.created_at,
                        r.steps_done,
                        r.energy_j,
                        r.cost_usd
                    );
                }
            }
        }
        RunsCommand::Show { run, events } => {
            let stored = store.run(run).map_err(|e| miette!("{e}"))?;
            if *events {
                for e in store.events(run).map_err(|e| miette!("{e}"))? {
                    println!("{e}");
                }
            } else if args.json {
                println!("{}", serde_json::to_string(&stored).into_diagnostic()?);
            } else {
                println!(
                    "run {}: `{}` from {}, {} (started {}{})",
                    stored.id,
                    stored.workflow,
                    stored.file,
                    stored.status,
                    stored.created_at,
                    stored
                        .ended_at
                        .as_ref()
                        .map(|e| format!(", ended {e}"))
                        .unwrap_or_default()
                );
                match stored
                    .report
                    .as_ref()
                    .and_then(|r| serde_json::from_value::<ShownReport>(r.clone()).ok())
                {
                    Some(r) => print!("{}", r.text()),
                    None => println!(
                        "no report (the run did not end normally; `joule resume {}`)",
                        stored.id
                    ),
                }
                if let Some(e) = stored.error {
                    println!("error: {e}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The part of a stored report `joule runs show` prints.
#[derive(Deserialize)]
struct ShownReport {
    steps: Vec<serde_json::Value>,
    totals: serde_json::Value,
    slo_met: Option<bool>,
}

impl ShownReport {
    fn text(&self) -> String {
        let mut out = String::new();
        for s in &self.steps {
            out.push_str(&format!(
                "  {:20} {:10} {:28} {:>8.2} s (plan {:>6.2})  {:>8.1} J {}\n",
                s["id"].as_str().unwrap_or("?"),
                s["status"].as_str().unwrap_or("?"),
                format!(
                    "{}@{}",
                    s["model"].as_str().unwrap_or("-"),
                    s["device"].as_str().unwrap_or("-")
                ),
                s["latency_s"].as_f64().unwrap_or(0.0),
                s["predicted_latency_s"].as_f64().unwrap_or(0.0),
                s["energy_j"].as_f64().unwrap_or(0.0),
                s["energy_method"].as_str().unwrap_or("-"),
            ));
        }
        out.push_str(&format!(
            "  total {:.2} s, {:.1} J [{}], ${:.6}; SLO {}\n",
            self.totals["latency_s"].as_f64().unwrap_or(0.0),
            self.totals["energy_j"].as_f64().unwrap_or(0.0),
            self.totals["energy_method"].as_str().unwrap_or("-"),
            self.totals["cost_usd"].as_f64().unwrap_or(0.0),
            match self.slo_met {
                Some(true) => "met",
                Some(false) => "missed",
                None => "none",
            }
        ));
        out
    }
}

/// Live progress on stderr: a spinner per running call on a terminal, a line per finished
/// step otherwise.
struct Display {
    enabled: bool,
    multi: Option<indicatif::MultiProgress>,
    bars: std::collections::HashMap<(String, Option<usize>), indicatif::ProgressBar>,
}

impl Display {
    fn new(enabled: bool) -> Self {
        let multi =
            (enabled && std::io::stderr().is_terminal()).then(indicatif::MultiProgress::new);
        Self {
            enabled,
            multi,
            bars: Default::default(),
        }
    }

    fn finish(&mut self) {
        for (_, bar) in self.bars.drain() {
            bar.finish_and_clear();
        }
    }

    fn line(&self, text: String) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }
}

impl Sink for Display {
    fn record(&mut self, r: &Record) -> Result<(), SinkError> {
        if !self.enabled {
            return Ok(());
        }
        match &r.event {
            Event::AttemptStarted {
                step,
                index,
                attempt,
                config,
                ..
            } => {
                if let Some(m) = &self.multi {
                    let bar = m.add(indicatif::ProgressBar::new_spinner());
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{spinner} {msg} {elapsed} {prefix}",
                        )
                        .expect("a valid template"),
                    );
                    bar.enable_steady_tick(std::time::Duration::from_millis(120));
                    bar.set_message(format!(
                        "{step}{} on {}{}{}",
                        index.map(|i| format!("[{i}]")).unwrap_or_default(),
                        config
                            .model
                            .as_deref()
                            .map(|m| format!("{m}@"))
                            .unwrap_or_default(),
                        config.device,
                        if *attempt > 1 {
                            format!(" (attempt {attempt})")
                        } else {
                            String::new()
                        }
                    ));
                    if let Some(old) = self.bars.insert((step.clone(), *index), bar) {
                        old.finish_and_clear();
                    }
                }
            }
            Event::Progress {
                step,
                index,
                tokens,
            } => {
                if let Some(bar) = self.bars.get(&(step.clone(), *index)) {
                    bar.set_prefix(format!("{tokens} tokens"));
                }
            }
            Event::AttemptEnded {
                step,
                index,
                attempt,
                ok,
                error,
                cached,
                ..
            } => {
                if let Some(bar) = self.bars.remove(&(step.clone(), *index)) {
                    bar.finish_and_clear();
                }
                if *cached {
                    self.line(format!(
                        "  {step}{}: answered from an earlier identical call (cache: true)",
                        index.map(|i| format!("[{i}]")).unwrap_or_default()
                    ));
                }
                if !ok {
                    self.line(format!(
                        "  {step}{} attempt {attempt} failed: {}",
                        index.map(|i| format!("[{i}]")).unwrap_or_default(),
                        error.as_deref().unwrap_or("?")
                    ));
                }
            }
            Event::PolicyRefused {
                step,
                config,
                reason,
                ..
            } => self.line(format!(
                "  {step}: refused {}@{}: {reason}",
                config.model.as_deref().unwrap_or("-"),
                config.device
            )),
            Event::Fallback {
                step, to, reason, ..
            } => self.line(format!(
                "  {step}: falling back to {}@{} ({reason})",
                to.model.as_deref().unwrap_or("-"),
                to.device
            )),
            Event::Replanned { note, changes, .. } => {
                self.line(format!("  re-planned: {note}"));
                for (s, from, to) in changes {
                    self.line(format!(
                        "    {s}: {}@{} -> {}@{}",
                        from.model.as_deref().unwrap_or("-"),
                        from.device,
                        to.model.as_deref().unwrap_or("-"),
                        to.device
                    ));
                }
            }
            Event::StepSkipped { step, reason } => {
                self.line(format!("  - {step} skipped: {reason}"))
            }
            Event::StepEnded {
                step,
                ok: true,
                figures,
                resumed,
                ..
            } => self.line(format!(
                "  ✓ {step} {}",
                if *resumed {
                    "(finished in an earlier run)".to_string()
                } else {
                    format!("{:.2} s", figures.latency_s)
                }
            )),
            Event::StepEnded {
                step,
                error,
                ok: false,
                ..
            } => self.line(format!(
                "  ✗ {step}: {}",
                error.as_deref().unwrap_or("failed")
            )),
            _ => {}
        }
        Ok(())
    }
}
