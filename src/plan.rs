//! `joule plan FILE`: choose a model and device for every step within the budgets.

use std::path::PathBuf;
use std::process::ExitCode;

use joule_planner::Dag;
use joule_planner::catalog::Catalog;
use joule_planner::estimate::Environment;
use joule_planner::plan::{self, PlanError, Request};
use joule_planner::profile::Profiles;
use joule_planner::solve::{Baseline, Options};
use joule_planner::spec::{Name, Objective, StepKind, units};
use miette::{IntoDiagnostic, WrapErr, miette};

#[derive(Clone, Copy, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// What planning depends on, shared by `joule plan` and `joule run`.
#[derive(clap::Args, Clone, serde::Serialize, serde::Deserialize)]
pub struct Planning {
    /// What to minimise (default: the workflow's `objective`).
    #[arg(long, value_enum)]
    pub objective: Option<ObjectiveArg>,
    /// Replace the workflow's latency SLO, e.g. `45s`.
    #[arg(long, value_parser = parse_slo)]
    pub slo: Option<f64>,
    /// Extra profile files, merged over the reference figures (measured beats published).
    #[arg(long = "profiles", num_args = 1..)]
    pub profiles: Vec<PathBuf>,
    /// A catalog file instead of the built-in one.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// The operator policy, which workflows cannot widen (default `$JOULE_POLICY`).
    #[arg(long)]
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// Local devices to plan for, comma-separated (default: what this machine has).
    #[arg(long, value_delimiter = ',')]
    pub devices: Option<Vec<String>>,
    /// The solver's time limit in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub time_limit: f64,
    /// Run every llm step on this model, setting its quality floors aside (for a machine that
    /// has one small model, or to compare models).
    #[arg(long)]
    #[serde(default)]
    pub model: Option<String>,
    /// Plan with the reference figures and `--profiles` only, not this machine's profiles:
    /// the shipped profile of this machine kind (e.g. profiles/cpu-2core.yaml on a 2-thread
    /// AMD EPYC; `JOULE_SHIPPED_PROFILES=0` leaves those out alone) and the files in
    /// `$JOULE_PROFILES_DIR`, default `$JOULE_HOME/profiles` (`joule profile` and `joule eval`
    /// output, and the calibration that runs keep up to date).
    #[arg(long)]
    #[serde(default)]
    pub no_machine_profiles: bool,
}

/// Where this machine's profiles live: `joule profile` writes there, runs calibrate there,
/// and the planner reads every `*.yaml` there by default.
pub fn profiles_dir() -> PathBuf {
    std::env::var_os("JOULE_PROFILES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            joule_executor::models::ModelStore::from_env()
                .home()
                .join("profiles")
        })
}

/// The calibration profile runs update.
pub const CALIBRATION: &str = "calibration.yaml";

/// This machine's profile files, calibration last (so it wins ties between measurements).
fn machine_profiles() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(profiles_dir())
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort_by_key(|p| (p.file_name().is_some_and(|n| n == CALIBRATION), p.clone()));
    files
}

impl Planning {
    /// The merged profiles, or `None` after printing why a file is unusable.
    pub fn profiles(&self) -> Option<Profiles> {
        let mut profiles = Profiles::reference();
        let shipped = !self.no_machine_profiles
            && !matches!(
                std::env::var("JOULE_SHIPPED_PROFILES").as_deref(),
                Ok("0" | "off")
            );
        if shipped {
            let cpu = joule_executor::devices::cpu();
            for file in Profiles::shipped_for(&cpu.model, cpu.threads) {
                profiles.merge(file);
            }
        }
        let machine = if self.no_machine_profiles {
            Vec::new()
        } else {
            machine_profiles()
        };
        for path in machine.iter().chain(&self.profiles) {
            match Profiles::load(path) {
                Ok(file) => profiles.merge(file),
                Err(errors) => {
                    crate::diagnostics::print(&errors);
                    return None;
                }
            }
        }
        Some(profiles)
    }

    /// Applies `--model` to a compiled workflow, or says why it cannot.
    pub fn apply(&self, dag: &mut Dag, catalog: &Catalog) -> miette::Result<()> {
        let Some(model) = &self.model else {
            return Ok(());
        };
        if catalog.model(model).is_none() {
            let known: Vec<&str> = catalog.models.iter().map(|m| m.id.as_str()).collect();
            return Err(miette!(
                "--model {model}: not a catalog model; use one of: {}",
                known.join(", ")
            ));
        }
        let mut floors = 0;
        for step in &mut dag.workflow.steps {
            if let StepKind::Llm(l) = &mut step.kind {
                floors += usize::from(l.quality.is_some());
                l.model = Some(Name {
                    name: model.clone(),
                    pos: Default::default(),
                });
                l.quality = None;
            }
        }
        if floors > 0 {
            eprintln!(
                "note: --model {model}: every llm step runs on it; {floors} quality floor(s) are not enforced"
            );
        }
        Ok(())
    }

    pub fn environment(&self) -> Environment {
        Environment {
            devices: self.devices.clone().unwrap_or_else(detected_devices),
            local_models: None,
            resident: Default::default(),
        }
    }

    pub fn request(&self, baseline: Option<Baseline>) -> Request {
        Request {
            objective: self.objective.map(|o| match o {
                ObjectiveArg::Energy => Objective::Energy,
                ObjectiveArg::Cost => Objective::Cost,
                ObjectiveArg::Latency => Objective::Latency,
            }),
            slo_s: self.slo,
            baseline,
            options: Options {
                time_limit_s: self.time_limit,
            },
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// The workflow file.
    file: PathBuf,
    #[command(flatten)]
    planning: Planning,
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
    let Some(catalog) = crate::diagnostics::catalog(args.planning.catalog.as_deref()) else {
        return Ok(ExitCode::FAILURE);
    };
    let Some(profiles) = args.planning.profiles() else {
        return Ok(ExitCode::FAILURE);
    };
    let Some(ctx) = crate::diagnostics::compile_context(&catalog, args.planning.policy.as_deref())
    else {
        return Ok(ExitCode::FAILURE);
    };
    let mut dag = match joule_planner::load(&args.file, &ctx) {
        Ok(d) => d,
        Err(errors) => {
            crate::diagnostics::print(&errors);
            return Ok(ExitCode::FAILURE);
        }
    };
    args.planning.apply(&mut dag, &catalog)?;
    let env = args.planning.environment();
    let request = args.planning.request(args.baseline.map(|b| match b {
        BaselineArg::Static => Baseline::Static,
        BaselineArg::Greedy => Baseline::Greedy,
    }));

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
        Err(e) => {
            print_error(e, args.json)?;
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Says why no plan exists, as text on stderr or JSON on stdout.
pub fn print_error(e: PlanError, json: bool) -> miette::Result<()> {
    match e {
        PlanError::Infeasible(why) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "feasible": false, "workflow": why.workflow, "reasons": why.reasons, "best": why.best, "min_slo_s": why.min_slo_s })
                );
            } else {
                eprint!("{}", why.to_text());
            }
            Ok(())
        }
        PlanError::NoConfig { step, reasons } => {
            let mut msg = format!("step `{step}` has no model and device it may run on");
            for r in reasons {
                msg.push_str(&format!("\n  - {r}"));
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "feasible": false, "reasons": [msg] })
                );
            } else {
                eprintln!(
                    "{msg}\nlower its `quality`, allow more providers or models in its policy, or profile more devices"
                );
            }
            Ok(())
        }
        e @ PlanError::Solver(_) => Err(miette!("{e}")),
    }
}
