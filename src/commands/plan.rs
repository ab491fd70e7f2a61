//! `joule plan FILE`: choose a model and device for every step within the budgets, or sweep
//! the SLO for the trade-off between latency, energy and cost.

use std::path::PathBuf;
use std::process::ExitCode;

use joule_app::{AppError, Assembly, Settings};
use joule_planner::plan;
use joule_planner::solve::Strategy;
use joule_planner::spec::units;

use super::{Outcome, PlanningArgs};
use crate::show::diagnostics::fail_as;

#[derive(clap::Args)]
pub struct Args {
    /// The workflow file.
    file: PathBuf,
    #[command(flatten)]
    planning: PlanningArgs,
    /// Plan with a baseline instead of the MILP, for comparison: `static` or `greedy`.
    #[arg(long, value_parser = parse_baseline)]
    baseline: Option<Strategy>,
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

fn parse_baseline(s: &str) -> Result<Strategy, String> {
    match s.parse::<Strategy>()? {
        Strategy::Joule => {
            Err("`joule` is the MILP itself; a baseline is `static` or `greedy`".into())
        }
        b => Ok(b),
    }
}

pub fn run(args: &Args, settings: Settings) -> Outcome {
    match plan_or_sweep(args, settings) {
        Ok(code) => Ok(code),
        Err(e) => Ok(fail_as(e, args.json)),
    }
}

fn plan_or_sweep(args: &Args, settings: Settings) -> Outcome {
    let assembly = Assembly::new(settings, args.planning.planning(), Vec::new())?;
    let source = joule_planner::spec::read_source(&args.file).map_err(AppError::spec)?;
    let mut dag = assembly.compile(&source)?;
    let floors = assembly.pin_model(&mut dag)?;
    if floors > 0 {
        eprintln!(
            "note: --model: every llm step runs on it; {floors} quality floor(s) are not enforced"
        );
    }
    let env = joule_planner::estimate::Environment {
        local_models: None,
        ..assembly.environment()
    };
    let request = assembly
        .planning
        .request(args.baseline.unwrap_or(Strategy::Joule));
    let (catalog, profiles) = (&assembly.catalog, &assembly.profiles);
    if args.pareto {
        let out = args
            .out
            .as_ref()
            .ok_or_else(|| AppError::invalid("--pareto needs --out DIR"))?;
        let problem = plan::problem(&dag, catalog, profiles, &env, &request);
        let points = joule_planner::pareto::sweep(&problem, args.points, &request.options)
            .map_err(|e| AppError::failed(e.to_string()))?;
        if points.is_empty() {
            eprintln!(
                "no plan is feasible at any SLO; see `joule plan {}`",
                args.file.display()
            );
            return Ok(ExitCode::FAILURE);
        }
        let io = |p: &std::path::Path, e: std::io::Error| {
            AppError::failed(format!("writing {}: {e}", p.display()))
        };
        std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
        let csv = out.join("pareto.csv");
        std::fs::write(&csv, joule_planner::pareto::csv(&points)).map_err(|e| io(&csv, e))?;
        let svg = joule_lab::plot::pareto::svg(
            &points,
            &format!("{}: energy and cost against latency", dag.workflow.name),
        )
        .map_err(|e| AppError::failed(format!("drawing pareto.svg: {e}")))?;
        let svg_path = out.join("pareto.svg");
        std::fs::write(&svg_path, svg).map_err(|e| io(&svg_path, e))?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string(&points).map_err(|e| AppError::failed(e.to_string()))?
            );
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
            println!("wrote {} and {}", csv.display(), svg_path.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let p = plan::plan(&dag, catalog, profiles, &env, &request)?;
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
