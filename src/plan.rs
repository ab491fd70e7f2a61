//! `joule plan FILE`: choose a model and device for every step within the budgets.

use std::path::PathBuf;
use std::process::ExitCode;

use joule_planner::estimate::Environment;
use joule_planner::plan::{self, PlanError, Request};
use joule_planner::profile::Profiles;
use joule_planner::solve::{Baseline, Options};
use joule_planner::spec::{Objective, units};
use miette::{IntoDiagnostic, WrapErr, miette};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ObjectiveArg {
    Energy,
    Cost,
    Latency,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum BaselineArg {
    /// Every llm step on the best-quality model, on its fastest device.
    Static,
    /// Each step alone on its cheapest config that meets its quality floor.
    Greedy,
}

#[derive(clap::Args)]
pub struct Args {
    /// The workflow file.
    file: PathBuf,
    /// What to minimise (default: the workflow's `objective`).
    #[arg(long, value_enum)]
    objective: Option<ObjectiveArg>,
    /// Replace the workflow's latency SLO, e.g. `45s`.
    #[arg(long, value_parser = parse_slo)]
    slo: Option<f64>,
    /// Extra profile files, merged over the reference figures (measured beats published).
    #[arg(long = "profiles", num_args = 1..)]
    profiles: Vec<PathBuf>,
    /// A catalog file instead of the built-in one.
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Local devices to plan for, comma-separated (default: what this machine has).
    #[arg(long, value_delimiter = ',')]
    devices: Option<Vec<String>>,
    /// Plan with a baseline instead of the MILP, for comparison.
    #[arg(long, value_enum)]
    baseline: Option<BaselineArg>,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
    /// Sweep the SLO and write pareto.csv and pareto.svg to --out.
    #[arg(long, requires = "out")]
    pareto: bool,
    /// Where --pareto writes its files.
    #[arg(long)]
    out: Option<PathBuf>,
    /// How many SLOs --pareto tries.
    #[arg(long, default_value_t = 12)]
    points: usize,
    /// The solver's time limit in seconds.
    #[arg(long, default_value_t = 10.0)]
    time_limit: f64,
}

fn parse_slo(s: &str) -> Result<f64, String> {
    units::parse_duration(s).and_then(|v| {
        if v > 0.0 {
            Ok(v)
        } else {
            Err("the SLO must be more than zero".into())
        }
    })
}

/// Local devices this machine has. Only the CPU until the build has the `cuda` feature.
fn detected_devices() -> Vec<String> {
    vec!["cpu".to_string()]
}

pub fn run(args: &Args) -> miette::Result<ExitCode> {
    let Some(catalog) = crate::diagnostics::catalog(args.catalog.as_deref()) else {
        return Ok(ExitCode::FAILURE);
    };
    let mut profiles = Profiles::reference();
    for path in &args.profiles {
        match Profiles::load(path) {
            Ok(file) => profiles.merge(file),
            Err(errors) => {
                crate::diagnostics::print(&errors);
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    let dag = match joule_planner::load(&args.file, &catalog.compile_context()) {
        Ok(d) => d,
        Err(errors) => {
            crate::diagnostics::print(&errors);
            return Ok(ExitCode::FAILURE);
        }
    };
    let env = Environment {
        devices: args.devices.clone().unwrap_or_else(detected_devices),
    };
    let request = Request {
        objective: args.objective.map(|o| match o {
            ObjectiveArg::Energy => Objective::Energy,
            ObjectiveArg::Cost => Objective::Cost,
            ObjectiveArg::Latency => Objective::Latency,
        }),
        slo_s: args.slo,
        baseline: args.baseline.map(|b| match b {
            BaselineArg::Static => Baseline::Static,
            BaselineArg::Greedy => Baseline::Greedy,
        }),
        options: Options {
            time_limit_s: args.time_limit,
        },
    };

    if args.pareto {
        let out = args
            .out
            .as_ref()
            .ok_or_else(|| miette!("--pareto needs --out DIR"))?;
        let problem = plan::problem(&dag, &catalog, &profiles, &env, &request);
        let points = joule_planner::pareto::sweep(&problem, args.points, &request.options)
            .map_err(|e| miette!("{e}"))?;
        if points.is_empty() {
            eprintln!(
                "no plan is feasible at any SLO; see `joule plan {}`",
                args.file.display()
            );
            return Ok(ExitCode::FAILURE);
        }
        std::fs::create_dir_all(out)
            .into_diagnostic()
            .wrap_err_with(|| format!("creating {}", out.display()))?;
        std::fs::write(out.join("pareto.csv"), joule_planner::pareto::csv(&points))
            .into_diagnostic()?;
        let svg = joule_planner::pareto::svg(
            &points,
            &format!("{}: energy and cost against latency", dag.workflow.name),
        )
        .map_err(|e| miette!("drawing pareto.svg: {e}"))?;
        std::fs::write(out.join("pareto.svg"), svg).into_diagnostic()?;
        if args.json {
            println!("{}", serde_json::to_string(&points).into_diagnostic()?);
        } else {
            println!(
                "{:>10}  {:>10}  {:>12}  {:>12}",
                "slo", "latency", "energy", "cost"
            );
            for p in &points {
                println!(
                    "{:>10}  {:>10}  {:>12}  {:>12}",
                    units::format_duration(p.slo_s),
                    units::format_duration(p.latency_s),
                    plan::format_energy(p.energy_j),
                    plan::format_cost(p.cost_usd)
                );
            }
            println!(
                "wrote {} and {}",
                out.join("pareto.csv").display(),
                out.join("pareto.svg").display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }

    match plan::plan(&dag, &catalog, &profiles, &env, &request) {
        Ok(p) => {
            if args.json {
                println!("{}", p.to_json());
            } else {
                print!("{}", p.to_text());
            }
            Ok(if p.feasible {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(PlanError::Infeasible(why)) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "feasible": false, "workflow": why.workflow, "reasons": why.reasons, "best": why.best, "min_slo_s": why.min_slo_s })
                );
            } else {
                eprint!("{}", why.to_text());
            }
            Ok(ExitCode::FAILURE)
        }
        Err(PlanError::NoConfig { step, reasons }) => {
            let mut msg = format!("step `{step}` has no model and device it may run on");
            for r in reasons {
                msg.push_str(&format!("\n  - {r}"));
            }
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "feasible": false, "reasons": [msg] })
                );
            } else {
                eprintln!(
                    "{msg}\nlower its `quality`, allow more providers or models in its policy, or profile more devices"
                );
            }
            Ok(ExitCode::FAILURE)
        }
        Err(e @ PlanError::Solver(_)) => Err(miette!("{e}")),
    }
}
