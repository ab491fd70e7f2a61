//! `joule bench`: runs a benchmark suite's workflows under each policy (static, greedy,
//! joule) and SLO tier, on real backends or simulated on the profiles, and writes
//! results.csv, summary.md and plots.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use joule_executor::backend::Backend;
use joule_executor::bench::{
    self, BenchError, Entry, Mode, Policy, Results, Row, Suite, plot, summary,
};
use joule_executor::models::ModelStore;
use joule_executor::report::Report;
use joule_executor::runtime::{Cancel, Executor, Job, Options, Prior, RunStatus, Sink};
use joule_executor::store::{NewRun, Store};
use joule_planner::Dag;
use joule_planner::catalog::Catalog;
use joule_planner::estimate::Environment;
use joule_planner::plan::{self as planner_plan, Plan, PlanError};
use joule_planner::profile::Profiles;
use joule_planner::solve::Baseline;
use joule_planner::spec::Objective;
use miette::{IntoDiagnostic, miette};

use crate::plan::Planning;

#[derive(clap::Args)]
pub struct Args {
    /// The suite: a directory with a suite.yaml, or the manifest itself.
    #[arg(long, default_value = "workflows/bench")]
    suite: PathBuf,
    /// Requests per workflow, policy and tier; the suite's requests are asked in order.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    requests: u32,
    /// The policies to compare, comma-separated: static, greedy, joule.
    #[arg(long, value_delimiter = ',', default_value = "static,greedy,joule")]
    policies: Vec<String>,
    /// The SLO tiers to run, comma-separated (the suite defines them per workflow).
    #[arg(long = "slo-tier", value_delimiter = ',', default_value = "standard")]
    tiers: Vec<String>,
    /// Evaluate the plans on the profiles alone instead of running them (seconds, not hours).
    #[arg(long)]
    simulate: bool,
    /// Where results.csv, summary.md, the plots and the runs' record go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    #[command(flatten)]
    planning: Planning,
    /// Point a catalog endpoint at another URL, `NAME=URL`.
    #[arg(long = "endpoint", value_name = "NAME=URL")]
    endpoint: Vec<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// One (workflow, tier, policy)'s plan, fixed for all its requests.
struct Planned {
    entry: usize,
    tier: String,
    slo_s: f64,
    policy: Policy,
    plan: Plan,
    /// `milp`, `static`, `greedy`, or `best-effort` when no plan met the SLO.
    method: String,
    dag: Arc<Dag>,
    problem: joule_planner::estimate::Problem,
}

pub fn run(args: &Args) -> miette::Result<ExitCode> {
    if args.planning.slo.is_some() {
        return Err(miette!(
            "joule bench takes its SLOs from the suite's tiers: use --slo-tier, not --slo"
        ));
    }
    if args.planning.model.is_some() {
        return Err(miette!(
            "joule bench compares how policies choose models: --model would pin them all alike"
        ));
    }
    let mut policies = Vec::new();
    for p in &args.policies {
        let policy = Policy::parse(p.trim()).ok_or_else(|| {
            miette!("--policies: unknown policy `{p}`; use static, greedy and/or joule")
        })?;
        if !policies.contains(&policy) {
            policies.push(policy);
        }
    }
    let Some(catalog) = crate::diagnostics::catalog(args.planning.catalog.as_deref()) else {
        return Ok(ExitCode::FAILURE);
    };
    let mut catalog = catalog;
    crate::run::point_endpoints(&mut catalog, &args.endpoint)?;
    let Some(ctx) = crate::diagnostics::compile_context(&catalog, args.planning.policy.as_deref())
    else {
        return Ok(ExitCode::FAILURE);
    };
    let suite = match Suite::load(&args.suite, &ctx) {
        Ok(s) => s,
        Err(BenchError::Spec(errors)) => {
            crate::diagnostics::print(&errors);
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let tiers: Vec<String> = args.tiers.iter().map(|t| t.trim().to_string()).collect();
    if let Err(e) = suite.check_tiers(&tiers) {
        eprintln!("error: {e}");
        return Ok(ExitCode::FAILURE);
    }
    let Some(profiles) = args.planning.profiles() else {
        return Ok(ExitCode::FAILURE);
    };
    let mode = if args.simulate {
        Mode::Simulated
    } else {
        Mode::Real
    };
    let env = environment(&args.planning, &catalog, mode);
    let planned = match plan_all(
        &suite,
        &catalog,
        &profiles,
        &env,
        &args.planning,
        &tiers,
        &policies,
    ) {
        Ok(p) => p,
        Err(e) => {
            crate::plan::print_error(e, args.json)?;
            return Ok(ExitCode::FAILURE);
        }
    };
    if !args.json {
        print_plans(&suite, &planned);
    }
    let mut results = Results::create(&args.out, mode).map_err(|e| miette!("--out: {e}"))?;
    let n = args.requests as usize;
    let started = Instant::now();
    let command = std::iter::once("joule".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let profiles_used = planned
        .first()
        .map(|p| p.plan.profiles.join(", "))
        .unwrap_or_default();
    let mut notes = vec![match mode {
        Mode::Real => format!(
            "real (`{command}`): {} workflows x {} tier(s) x {} policies x {n} requests, the policies taking turns request by request, on {}; plans from profiles {profiles_used}",
            suite.entries.len(),
            tiers.len(),
            policies.len(),
            machine()
        ),
        Mode::Simulated => format!(
            "simulated (`{command}`): each request is its plan's prediction, for devices {} with profiles {profiles_used}",
            env.devices.join(", ")
        ),
    }];
    let finished = match mode {
        Mode::Simulated => {
            simulate(&suite, &planned, n, &mut results)?;
            true
        }
        Mode::Real => real(
            args,
            &suite,
            catalog,
            profiles,
            &planned,
            n,
            &mut results,
            &mut notes,
        )?,
    };
    let groups = summary::groups(results.rows());
    if !finished {
        notes.push("interrupted: these figures cover the requests that finished".into());
    }
    // Each mode's notes are kept beside its rows, so a summary of both modes has both.
    write(
        &args.out.join(format!("notes-{}.txt", mode.as_str())),
        &(notes.join("\n") + "\n"),
    )?;
    let notes: Vec<String> = [Mode::Real, Mode::Simulated]
        .iter()
        .filter(|m| results.rows().iter().any(|r| r.mode == **m))
        .filter_map(|m| {
            std::fs::read_to_string(args.out.join(format!("notes-{}.txt", m.as_str()))).ok()
        })
        .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    let md = summary::markdown(&suite.name, &groups, &notes);
    write(&args.out.join("summary.md"), &md)?;
    let json = serde_json::json!({
        "suite": suite.name,
        "notes": notes,
        "groups": groups,
    });
    write(
        &args.out.join("summary.json"),
        &(serde_json::to_string_pretty(&json).into_diagnostic()? + "\n"),
    )?;
    let mut plots = Vec::new();
    for m in [Mode::Real, Mode::Simulated] {
        if !groups.iter().any(|g| g.mode == m) {
            continue;
        }
        let svgs = [
            ("energy", plot::energy(&groups, m)),
            ("latency-cdf", plot::latency_cdf(results.rows(), &groups, m)),
            ("energy-quality", plot::energy_quality(&groups, m)),
        ];
        for (name, svg) in svgs {
            let path = args.out.join(format!("{name}-{}.svg", m.as_str()));
            write(&path, &svg.map_err(|e| miette!("plot {name}: {e}"))?)?;
            plots.push(path);
        }
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{md}");
        println!(
            "wrote {}, {} and {} plots to {} in {:.1} s",
            results.path().display(),
            args.out.join("summary.md").display(),
            plots.len(),
            args.out.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(if finished {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(130)
    })
}

/// The CPU and thread count, for the record.
fn machine() -> String {
    let cpu = joule_executor::devices::cpu();
    format!("{} ({} threads)", cpu.model, cpu.threads)
}

fn write(path: &Path, text: &str) -> miette::Result<()> {
    std::fs::write(path, text).map_err(|e| miette!("{}: {e}", path.display()))
}

/// What the bench plans for. Every local model is taken as resident: a benchmark measures a
/// service in its steady state, loads once up front (and reports that load separately), so no
/// request is charged for one. A real bench plans only with the models fetched here.
fn environment(planning: &Planning, catalog: &Catalog, mode: Mode) -> Environment {
    let mut env = planning.environment();
    let store = ModelStore::from_env();
    let local: Vec<&joule_planner::catalog::Model> = catalog
        .models
        .iter()
        .filter(|m| m.source.is_some() && (mode == Mode::Simulated || store.require(m).is_ok()))
        .collect();
    if mode == Mode::Real {
        env.local_models = Some(local.iter().map(|m| m.id.clone()).collect());
    }
    env.resident = local
        .iter()
        .flat_map(|m| env.devices.iter().map(|d| (m.id.clone(), d.clone())))
        .collect();
    env
}

fn plan_all(
    suite: &Suite,
    catalog: &Catalog,
    profiles: &Profiles,
    env: &Environment,
    planning: &Planning,
    tiers: &[String],
    policies: &[Policy],
) -> Result<Vec<Planned>, PlanError> {
    let mut out = Vec::new();
    for (i, entry) in suite.entries.iter().enumerate() {
        for tier in tiers {
            let slo_s = entry.slo[tier];
            for &policy in policies {
                let mut request = planning.request(baseline(policy));
                request.slo_s = Some(slo_s);
                let (plan, method) =
                    match planner_plan::plan(&entry.dag, catalog, profiles, env, &request) {
                        Ok(p) => {
                            let m = p.method.clone();
                            (p, m)
                        }
                        // No plan meets the tier: run the fastest one that keeps the quality
                        // floors, and let the SLO column say it was missed.
                        Err(PlanError::Infeasible(_)) => {
                            let mut fastest = request.clone();
                            fastest.objective = Some(Objective::Latency);
                            fastest.slo_s = Some(f64::MAX);
                            let mut p =
                                planner_plan::plan(&entry.dag, catalog, profiles, env, &fastest)?;
                            p.budget.latency_s = Some(slo_s);
                            (p, "best-effort".to_string())
                        }
                        Err(e) => return Err(e),
                    };
                let mut dag = entry.dag.clone();
                dag.workflow.budget = plan.budget;
                let problem = planner_plan::problem(&dag, catalog, profiles, env, &request);
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

fn baseline(p: Policy) -> Option<Baseline> {
    match p {
        Policy::Static => Some(Baseline::Static),
        Policy::Greedy => Some(Baseline::Greedy),
        Policy::Joule => None,
    }
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

fn print_plans(suite: &Suite, planned: &[Planned]) {
    println!(
        "suite `{}`: {} workflows; plans (predicted per request):",
        suite.name,
        suite.entries.len()
    );
    for p in planned {
        let steps: Vec<String> = p
            .plan
            .steps
            .iter()
            .filter_map(|s| Some(format!("{}={}@{}", s.id, s.model.as_deref()?, s.device)))
            .collect();
        println!(
            "  {:<24} {:<9} {:<7} {:<12} {:>7.1} s (SLO {:.0} s) {:>8.1} J  {}",
            suite.entries[p.entry].name(),
            p.tier,
            p.policy.as_str(),
            p.method,
            p.plan.totals.latency_s,
            p.slo_s,
            p.plan.totals.energy_j,
            steps.join(" ")
        );
    }
    println!();
}

/// Rows from the plans alone: each request is its plan's prediction (the planner does not see
/// input sizes, so a workflow's simulated requests are alike; the scenarios are what vary).
fn simulate(
    suite: &Suite,
    planned: &[Planned],
    n: usize,
    results: &mut Results,
) -> miette::Result<()> {
    for p in planned {
        let entry = &suite.entries[p.entry];
        let quality =
            bench::predicted_quality(&entry.dag, &p.plan, &entry.score.output).unwrap_or(0.0);
        let t = &p.plan.totals;
        for r in 0..n {
            results
                .push(Row {
                    mode: Mode::Simulated,
                    workflow: entry.name().to_string(),
                    tier: p.tier.clone(),
                    slo_s: p.slo_s,
                    policy: p.policy,
                    request: r,
                    input: entry.requests[r % entry.requests.len()].id.clone(),
                    run_id: String::new(),
                    status: "succeeded".into(),
                    plan: p.method.clone(),
                    models: plan_models(&p.plan),
                    latency_s: t.latency_s,
                    predicted_latency_s: t.latency_s,
                    slo_met: t.latency_s <= p.slo_s * (1.0 + 1e-9),
                    energy_j: t.energy_j,
                    energy_method: "estimate".into(),
                    predicted_energy_j: t.energy_j,
                    cost_usd: t.cost_usd,
                    quality,
                    tokens_in: tokens(&p.plan, |s| s.tokens_in),
                    tokens_out: tokens(&p.plan, |s| s.tokens_out),
                    error: String::new(),
                })
                .map_err(|e| miette!("{e}"))?;
        }
    }
    Ok(())
}

fn tokens(plan: &Plan, f: impl Fn(&planner_plan::PlannedStep) -> f64) -> u64 {
    plan.steps
        .iter()
        .map(|s| f(s) * f64::from(s.calls))
        .sum::<f64>()
        .round() as u64
}

/// Runs every request for real, interleaving the policies request by request so drift in the
/// machine (heat, other load) falls on all of them alike. Returns false when interrupted.
#[allow(clippy::too_many_arguments)]
fn real(
    args: &Args,
    suite: &Suite,
    catalog: Catalog,
    profiles: Profiles,
    planned: &[Planned],
    n: usize,
    results: &mut Results,
    notes: &mut Vec<String>,
) -> miette::Result<bool> {
    let catalog = Arc::new(catalog);
    let locals = crate::run::local_backends(&catalog, &args.planning)?;
    // Load every model a plan uses before the first request, and say what it took.
    let mut used: BTreeSet<(&str, &str)> = BTreeSet::new();
    for p in planned {
        for s in &p.plan.steps {
            if let Some(m) = &s.model {
                used.insert((m, &s.device));
            }
        }
    }
    for (model, device) in &used {
        if let Some(local) = locals.iter().find(|l| l.device_id() == *device) {
            let (_, seconds) = local
                .model(model)
                .map_err(|e| miette!("loading {model} on {device}: {e}"))?;
            let line = format!(
                "{model} loaded on {device} in {seconds:.1} s before the first request (charged to no request)"
            );
            eprintln!("{line}");
            notes.push(line);
        }
    }
    let workspace = std::fs::canonicalize(&suite.dir).unwrap_or_else(|_| suite.dir.clone());
    let devices: BTreeSet<&str> = used.iter().map(|(_, d)| *d).collect();
    let router: Arc<joule_executor::backend::Router> = Arc::new(crate::run::backends(
        &catalog, &locals, &workspace, &devices,
    )?);
    let backend: Arc<dyn Backend> = router.clone();
    let profiles = Arc::new(profiles);
    let executor = |replan: bool| {
        Executor::new(
            backend.clone(),
            catalog.clone(),
            profiles.clone(),
            Options {
                replan,
                ..Options::default()
            },
        )
    };
    let (planner_exec, baseline_exec) = (executor(true), executor(false));
    let mut store =
        Store::open(&args.out.join("runs.db")).map_err(|e| miette!("--out runs.db: {e}"))?;
    let stored = serde_json::to_value(crate::run::Stored {
        planning: args.planning.clone(),
        endpoints: args.endpoint.clone(),
        workspace: workspace.clone(),
    })
    .into_diagnostic()?;

    let total = (n * planned.len()) as u64;
    let bar = progress(total);
    let cancel = Cancel::new();
    let runtime = crate::runtime()?;
    let on_signal = cancel.clone();
    runtime.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: stopping; finished requests are kept");
            on_signal.cancel();
        }
    });
    // Request r of every (workflow, tier) under each policy in turn.
    let mut order: BTreeMap<(usize, &str), Vec<&Planned>> = BTreeMap::new();
    for p in planned {
        order.entry((p.entry, &p.tier)).or_default().push(p);
    }
    let mut done = 0usize;
    for r in 0..n {
        for group in order.values() {
            for p in group {
                if cancel.is_cancelled() {
                    bar.finish_and_clear();
                    return Ok(false);
                }
                let entry = &suite.entries[p.entry];
                let request = &entry.requests[r % entry.requests.len()];
                bar.set_message(format!("{} {} {}", entry.name(), p.tier, p.policy.as_str()));
                let exec = if p.policy == Policy::Joule {
                    &planner_exec
                } else {
                    &baseline_exec
                };
                let row = runtime.block_on(one(
                    exec, &mut store, &stored, entry, p, r, request, &*router, &cancel,
                ))?;
                let Some(row) = row else {
                    bar.finish_and_clear();
                    return Ok(false);
                };
                done += 1;
                let line = format!(
                    "[{done:>4}/{total}] {:<24} {:<8} {:<6} {:<14} {:>6.1} s ({}) {:>7.1} J {}  quality {:.2}{}",
                    entry.name(),
                    p.tier,
                    p.policy.as_str(),
                    request.id,
                    row.latency_s,
                    if row.slo_met { "SLO met" } else { "SLO missed" },
                    row.energy_j,
                    row.energy_method,
                    row.quality,
                    if row.error.is_empty() {
                        String::new()
                    } else {
                        format!("  error: {}", row.error)
                    }
                );
                if bar.is_hidden() {
                    eprintln!("{line}");
                } else {
                    bar.println(line);
                }
                results.push(row).map_err(|e| miette!("{e}"))?;
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    Ok(true)
}

fn progress(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::hidden();
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    }
    bar.set_length(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:40} [{bar:30}] {pos}/{len} elapsed {elapsed} eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Runs one request, records it in the store, and scores its answer. `None` when cancelled.
#[allow(clippy::too_many_arguments)]
async fn one(
    executor: &Executor,
    store: &mut Store,
    stored: &serde_json::Value,
    entry: &Entry,
    p: &Planned,
    r: usize,
    request: &bench::BenchRequest,
    scorer: &dyn Backend,
    cancel: &Cancel,
) -> miette::Result<Option<Row>> {
    let run_id = store.new_run_id().map_err(|e| miette!("{e}"))?;
    store
        .create_run(&NewRun {
            id: &run_id,
            workflow: entry.name(),
            file: entry.source.name(),
            source: entry.source.text(),
            inputs: &serde_json::Value::Object(request.inputs.clone()),
            plan: &p.plan.to_json(),
            options: stored,
        })
        .map_err(|e| miette!("{e}"))?;
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
            .map_err(|e| miette!("{e}"))?
    };
    if outcome.status == RunStatus::Cancelled {
        return Ok(None);
    }
    let report = Report::new(&p.plan, &outcome);
    store
        .set_report(&run_id, &report.to_json())
        .map_err(|e| miette!("{e}"))?;
    let answer = outcome
        .outputs
        .get(&entry.score.output)
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
    let (quality, detail) = match (&answer, outcome.status) {
        (Some(a), RunStatus::Succeeded) => {
            bench::score(entry.score.kind, &request.expected, a, scorer, cancel)
                .await
                .map_err(|e| miette!("scoring {}: {e}", request.id))?
        }
        _ => (0.0, String::new()),
    };
    tracing::debug!(request = %request.id, quality, detail, "scored");
    let succeeded = outcome.status == RunStatus::Succeeded;
    let models: BTreeSet<&str> = report
        .steps
        .iter()
        .filter(|s| s.status == "succeeded")
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
        status: match outcome.status {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Cancelled => "cancelled",
            _ => "failed",
        }
        .to_string(),
        plan: p.method.clone(),
        models: models.into_iter().collect::<Vec<_>>().join(";"),
        latency_s: report.totals.latency_s,
        predicted_latency_s: report.totals.predicted_latency_s,
        slo_met: succeeded && report.totals.latency_s <= p.slo_s,
        energy_j: report.totals.energy_j,
        energy_method: report
            .totals
            .energy_method
            .and_then(|m| serde_json::to_value(m).ok())
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        predicted_energy_j: report.totals.predicted_energy_j,
        cost_usd: report.totals.cost_usd,
        quality,
        tokens_in: report.steps.iter().map(|s| s.tokens_in).sum(),
        tokens_out: report.steps.iter().map(|s| s.tokens_out).sum(),
        error: report.error.clone().unwrap_or_default(),
    }))
}
