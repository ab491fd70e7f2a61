//! The run lifecycle: a workflow and its inputs become a planned run ([`load`], [`prepare`]),
//! the run executes with its record kept ([`execute`]), and a stored run is rebuilt to resume
//! ([`resumable`]) or replayed from its recorded answers ([`replay`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use joule_call::Backend;
use joule_executor::recorded::Recorded;
use joule_executor::report::Report;
use joule_executor::router::Router;
use joule_executor::runtime::{
    self, Cancel, Executor, Job, Options, Outcome, Prior, RunStatus, Sink,
};
use joule_executor::store::{NewRun, Store};
use joule_executor::trace::Trace;
use joule_planner::estimate::Problem;
use joule_planner::plan::{self, Plan};
use joule_planner::solve::Strategy;
use joule_planner::{Dag, SourceFile};
use serde_json::{Map, Value};

use crate::assembly::Assembly;
use crate::error::AppError;
use crate::options::RunOptions;
use crate::profiles;
use crate::settings::Settings;

/// A workflow to run: its text as it was read, compiled, with checked inputs and the options
/// the run will be stored with.
pub struct RunSpec {
    pub source: SourceFile,
    pub dag: Dag,
    pub inputs: Map<String, Value>,
    pub options: RunOptions,
}

/// Reads and compiles a workflow file and checks its inputs: a JSON object from
/// `inputs_file`, then `name=value` pairs (strings as written, other types as JSON).
pub fn load(
    assembly: &Assembly,
    file: &Path,
    inputs_file: Option<&Path>,
    pairs: &[String],
) -> Result<RunSpec, AppError> {
    let source = joule_planner::spec::read_source(file).map_err(AppError::spec)?;
    let dag = assembly.compile(&source)?;
    let mut given = match inputs_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| AppError::invalid(format!("--inputs {}: {e}", path.display())))?;
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(m)) => m,
                Ok(_) => {
                    return Err(AppError::invalid(format!(
                        "--inputs {}: expected a JSON object",
                        path.display()
                    )));
                }
                Err(e) => {
                    return Err(AppError::invalid(format!(
                        "--inputs {}: not JSON: {e}",
                        path.display()
                    )));
                }
            }
        }
        None => Map::new(),
    };
    for kv in pairs {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(AppError::invalid(format!(
                "--input `{kv}`: expected NAME=VALUE"
            )));
        };
        let value = runtime::inputs::parse_text(&dag.workflow, k.trim(), v)
            .map_err(|e| AppError::invalid(format!("--input: {e}")))?;
        given.insert(k.trim().to_string(), value);
    }
    let workspace = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    spec_of(assembly, source, dag, given, &workspace)
}

/// A workflow given as text (a service's submission) and its inputs as JSON, checked like a
/// file's; `workspace` is where its tools work.
pub fn load_text(
    assembly: &Assembly,
    name: &str,
    text: &str,
    inputs: Map<String, Value>,
    workspace: &Path,
) -> Result<RunSpec, AppError> {
    let source = SourceFile::new(name, text);
    let dag = assembly.compile(&source)?;
    spec_of(assembly, source, dag, inputs, workspace)
}

fn spec_of(
    assembly: &Assembly,
    source: SourceFile,
    dag: Dag,
    given: Map<String, Value>,
    workspace: &Path,
) -> Result<RunSpec, AppError> {
    let inputs = runtime::inputs::resolve(&dag.workflow, given).map_err(AppError::Inputs)?;
    Ok(RunSpec {
        source,
        dag,
        inputs,
        options: RunOptions {
            planning: assembly.planning.clone(),
            endpoints: assembly.endpoints.clone(),
            workspace: std::fs::canonicalize(workspace).unwrap_or(workspace.to_path_buf()),
        },
    })
}

/// A stored run to continue: its id, what it finished, and the plan it started with.
pub struct Resume {
    pub run_id: String,
    pub prior: Prior,
    pub plan: Plan,
}

/// A run ready to start: planned (or, resumed, with the plan it started with) and with the
/// backends its plan needs.
pub struct Ready {
    pub plan: Plan,
    /// How many steps `--model` took off their quality floors.
    pub floors_set_aside: usize,
    spec: RunSpec,
    problem: Problem,
    router: Router,
    resume: Option<(String, Prior)>,
    layer: Option<Layer>,
}

/// Wraps the backend a run's calls go through: a service puts its tenant's budget guard in
/// front of every call this way, without the executor knowing tenants exist.
pub type Layer = Box<dyn FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend> + Send>;

impl Ready {
    /// Sends every call of the run through `layer` first.
    pub fn layer(mut self, layer: Layer) -> Self {
        self.layer = Some(layer);
        self
    }

    pub fn is_resume(&self) -> bool {
        self.resume.is_some()
    }

    /// Where the run's tools work (and a scorer's tests run).
    pub fn workspace(&self) -> &std::path::Path {
        &self.spec.options.workspace
    }
}

/// Plans the run (a resumed run keeps its plan) and assembles its backends.
pub fn prepare(
    assembly: &Assembly,
    mut spec: RunSpec,
    resume: Option<Resume>,
) -> Result<Ready, AppError> {
    let floors_set_aside = assembly.pin_model(&mut spec.dag)?;
    let env = assembly.environment();
    let request = assembly.planning.request(Strategy::Joule);
    let sized = joule_planner::estimate::sized_by(&spec.dag, &spec.inputs);
    let problem = plan::problem(
        &sized,
        &assembly.catalog,
        &assembly.profiles,
        &env,
        &request,
    );
    let (plan, resume) = match resume {
        Some(r) => (r.plan, Some((r.run_id, r.prior))),
        None => (
            plan::plan(
                &sized,
                &assembly.catalog,
                &assembly.profiles,
                &env,
                &request,
            )?,
            None,
        ),
    };
    // The report compares against the SLO the run was held to.
    spec.dag.workflow.budget = plan.budget;
    let used: BTreeSet<&str> = plan.steps.iter().map(|s| s.device.as_str()).collect();
    let router = assembly.router(&assembly.local_backends()?, &spec.options.workspace, &used)?;
    Ok(Ready {
        plan,
        floors_set_aside,
        spec,
        problem,
        router,
        resume,
        layer: None,
    })
}

/// What is kept of a run.
#[derive(Debug, Clone, Default)]
pub struct Keep {
    /// The run store; `None` keeps no record (the run cannot be resumed or replayed).
    pub store: Option<PathBuf>,
    /// Every event as a JSON line.
    pub trace: Option<PathBuf>,
    /// Fold the run's measured speeds into the machine's calibration profile.
    pub calibrate: bool,
    /// The id the new run takes (a service's submission id); a fresh one when `None`.
    pub run_id: Option<String>,
}

/// A run that ended (succeeded, failed or cancelled).
pub struct Finished {
    pub run_id: String,
    pub outcome: Outcome,
    pub report: Report,
    /// Whether the run is in a store (and so can be resumed).
    pub stored: bool,
    /// What calibrating the machine profile did, when it was asked for and had something to
    /// learn from; a failure there costs the run nothing.
    pub calibration: Option<Result<usize, AppError>>,
}

/// Runs a prepared run to its end, recording every event in the store and trace and showing
/// it on `display`. `cancel` stops it cleanly: what finished is recorded.
pub async fn execute(
    assembly: &Assembly,
    ready: Ready,
    keep: &Keep,
    display: &mut dyn Sink,
    cancel: &Cancel,
) -> Result<Finished, AppError> {
    let Ready {
        plan,
        spec,
        problem,
        router,
        resume,
        layer,
        ..
    } = ready;
    let mut store = keep.store.as_deref().map(Store::open).transpose()?;
    let (run_id, prior) = match resume {
        Some((id, prior)) => {
            if let Some(s) = &mut store {
                s.reopen_run(&id)?;
            }
            (id, prior)
        }
        None => {
            let id = match (&keep.run_id, &store) {
                (Some(id), _) => id.clone(),
                (None, Some(s)) => s.new_run_id()?,
                (None, None) => format!("mem-{}", std::process::id()),
            };
            if let Some(s) = &mut store {
                s.create_run(&NewRun {
                    id: &id,
                    workflow: &spec.dag.workflow.name,
                    file: spec.source.name(),
                    source: spec.source.text(),
                    inputs: &Value::Object(spec.inputs.clone()),
                    plan: &plan,
                    options: &serde_json::to_value(&spec.options)
                        .map_err(|e| AppError::failed(e.to_string()))?,
                })?;
            }
            (id, Prior::default())
        }
    };
    let mut trace = match &keep.trace {
        Some(p) => Some(
            Trace::create(p)
                .map_err(|e| AppError::failed(format!("--trace {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let workflow = spec.dag.workflow.name.clone();
    let job = Job {
        run_id: run_id.clone(),
        dag: Arc::new(spec.dag),
        plan: plan.clone(),
        problem: Some(problem),
        inputs: spec.inputs,
        prior,
    };
    let mut backend: Arc<dyn Backend> = Arc::new(router);
    if let Some(layer) = layer {
        backend = layer(backend);
    }
    let mut executor = Executor::new(
        backend,
        assembly.catalog.clone(),
        assembly.profiles.clone(),
        local_concurrency(assembly),
    );
    if let Some(s) = &store {
        executor = executor.with_cache(Arc::new(s.cache()?));
    }
    let outcome = {
        // The display last: when it is told an event, the event is already kept (a service
        // wakes the run's followers then, and they read it from the store).
        let mut sinks: Vec<&mut dyn Sink> = Vec::new();
        if let Some(s) = &mut store {
            sinks.push(s);
        }
        if let Some(t) = &mut trace {
            sinks.push(t);
        }
        sinks.push(display);
        executor
            .run(job, &mut sinks, cancel)
            .await
            .map_err(|e| AppError::failed(e.to_string()))?
    };
    let report = Report::new(&plan, &outcome);
    let calibration = (keep.calibrate && !outcome.observations.is_empty()).then(|| {
        profiles::calibrate(
            &assembly.settings,
            &assembly.profiles,
            &workflow,
            &outcome.observations,
        )
    });
    if let Some(s) = &mut store {
        s.set_report(&run_id, &report)?;
    }
    Ok(Finished {
        run_id,
        outcome,
        report,
        stored: store.is_some(),
        calibration,
    })
}

/// A stored run rebuilt: its world (from the options it was stored with), its workflow as it
/// was, its inputs and the plan it started with.
pub struct Reloaded {
    pub assembly: Assembly,
    pub spec: RunSpec,
    pub plan: Plan,
}

/// Rebuilds a stored run from its record alone: the workflow text, inputs, options and plan
/// it was stored with (the files it came from may have changed or gone).
pub fn reload(
    settings: Settings,
    run: &joule_executor::store::StoredRun,
) -> Result<Reloaded, AppError> {
    let options = stored_options(run)?;
    let assembly = Assembly::new(
        settings,
        options.planning.clone(),
        options.endpoints.clone(),
    )?;
    let spec = stored_spec(&assembly, run, options)?;
    Ok(Reloaded {
        assembly,
        spec,
        plan: run.plan.clone(),
    })
}

fn stored_options(run: &joule_executor::store::StoredRun) -> Result<RunOptions, AppError> {
    serde_json::from_value(run.options.clone())
        .map_err(|e| AppError::failed(format!("run {} has unreadable options: {e}", run.id)))
}

/// A stored run's workflow compiled in `assembly`'s world, with its inputs, checked against
/// the plan it started with.
fn stored_spec(
    assembly: &Assembly,
    run: &joule_executor::store::StoredRun,
    options: RunOptions,
) -> Result<RunSpec, AppError> {
    let source = SourceFile::new(run.file.clone(), run.source.clone());
    let dag = assembly.compile(&source)?;
    let Value::Object(inputs) = run.inputs.clone() else {
        return Err(AppError::failed(format!(
            "run {} has unreadable inputs",
            run.id
        )));
    };
    if run.plan.steps.len() != dag.workflow.steps.len() {
        return Err(AppError::failed(format!(
            "run {}: the stored plan does not match the workflow's steps",
            run.id
        )));
    }
    Ok(RunSpec {
        source,
        dag,
        inputs,
        options,
    })
}

/// What `joule resume` finds.
pub enum Resumable {
    /// Nothing to do: the run already succeeded.
    Done { run_id: String },
    /// The run, ready to continue.
    Ready {
        assembly: Box<Assembly>,
        ready: Box<Ready>,
        finished_steps: usize,
        total_steps: usize,
    },
}

/// A stored run ready to continue where it stopped, without redoing finished steps.
/// The executor's options for a run: a CPU on the fast path batches its model calls, so as
/// many of its steps may run at once as its engine steps together (`JOULE_BATCH`); the
/// reference engines and GPUs keep the catalog's `streams`.
fn local_concurrency(assembly: &Assembly) -> Options {
    let load = assembly.settings.load_options();
    let mut options = Options::default();
    if load.engine == joule_models::local::EngineKind::Fast {
        for d in &assembly.catalog.devices {
            if d.kind == joule_planner::catalog::DeviceKind::Cpu {
                options
                    .concurrency
                    .insert(d.id.clone(), load.batch.max(d.streams as usize));
            }
        }
    }
    options
}

pub fn resumable(settings: Settings, store: &Path, id: &str) -> Result<Resumable, AppError> {
    let store = Store::open(store)?;
    let run = store.run(id)?;
    if run.status == RunStatus::Succeeded {
        return Ok(Resumable::Done { run_id: run.id });
    }
    let prior = store.prior(&run.id)?;
    drop(store);
    let Reloaded {
        assembly,
        spec,
        plan,
    } = reload(settings, &run)?;
    let finished_steps = prior.steps.len();
    let total_steps = spec.dag.workflow.steps.len();
    let ready = prepare(
        &assembly,
        spec,
        Some(Resume {
            run_id: run.id,
            prior,
            plan,
        }),
    )?;
    Ok(Resumable::Ready {
        assembly: Box::new(assembly),
        ready: Box::new(ready),
        finished_steps,
        total_steps,
    })
}

/// A stored run to continue in `assembly`'s world rather than one rebuilt from its stored
/// options: a service resumes its runs on the engines its other runs share. `None` when the
/// run had already succeeded.
pub fn resumable_in(
    assembly: &Assembly,
    store: &Path,
    id: &str,
) -> Result<Option<Ready>, AppError> {
    let store = Store::open(store)?;
    let run = store.run(id)?;
    if run.status == RunStatus::Succeeded {
        return Ok(None);
    }
    let prior = store.prior(&run.id)?;
    drop(store);
    let spec = stored_spec(assembly, &run, stored_options(&run)?)?;
    let resume = Resume {
        run_id: run.id,
        prior,
        plan: run.plan,
    };
    prepare(assembly, spec, Some(resume)).map(Some)
}

/// A replay's verdict.
#[derive(Debug, serde::Serialize)]
pub struct Replayed {
    pub run_id: String,
    pub reproduced: bool,
    pub recorded_calls: usize,
    pub status: RunStatus,
    pub error: Option<String>,
    pub outputs: Value,
    pub recorded_outputs: Value,
}

/// Runs a finished run again from its recorded answers (no model or tool runs) and checks
/// that every call it makes is the recorded one and the outputs come out the same.
pub async fn replay(settings: Settings, store: &Path, id: &str) -> Result<Replayed, AppError> {
    let store = Store::open(store)?;
    let run = store.run(id)?;
    if run.status != RunStatus::Succeeded {
        return Err(AppError::invalid(format!(
            "run {} {}; only a finished run can be replayed (`joule resume {}` first)",
            run.id, run.status, run.id
        )));
    }
    let recorded = Recorded {
        answers: store.recorded(&run.id)?,
    };
    let Reloaded {
        assembly,
        spec,
        plan,
    } = reload(settings, &run)?;
    let recorded_calls = recorded.answers.len();
    let configs = recorded.configs();
    let executor = Executor::new(
        Arc::new(recorded),
        assembly.catalog.clone(),
        assembly.profiles.clone(),
        Options {
            replan: false,
            no_backoff: true,
            configs,
            ..Options::default()
        },
    );
    let job = Job {
        run_id: format!("replay-of-{}", run.id),
        dag: Arc::new(spec.dag),
        plan,
        problem: None,
        inputs: spec.inputs,
        prior: Prior::default(),
    };
    let outcome = executor
        .run(job, &mut [], &Cancel::new())
        .await
        .map_err(|e| AppError::failed(e.to_string()))?;
    let recorded_outputs = run.outputs.unwrap_or_default();
    Ok(Replayed {
        reproduced: outcome.status == RunStatus::Succeeded && outcome.outputs == recorded_outputs,
        run_id: run.id,
        recorded_calls,
        status: outcome.status,
        error: outcome.error,
        outputs: outcome.outputs,
        recorded_outputs,
    })
}
