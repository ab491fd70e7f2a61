//! `joule bench`: run a benchmark suite's workflows under each policy (static, greedy, joule)
//! and SLO tier, on real backends or simulated on the profiles, and write results.csv,
//! summary.md and plots (the driver is `joule_lab::bench::driver`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use joule_app::{AppError, Assembly, Settings};
use joule_lab::bench::driver::{self, DriverError, Planned};
use joule_lab::bench::{BenchError, Mode, Results, Strategy, Suite};

use super::{EndpointArgs, Outcome, PlanningArgs, cancel_on_ctrl_c, runtime};
use crate::show::diagnostics::fail_as;
use crate::show::progress;

#[derive(clap::Args)]
pub struct Args {
    /// The suite: a directory with a suite.yaml, or the manifest itself.
    #[arg(long, default_value = "workflows/bench")]
    suite: PathBuf,
    /// Requests per workflow, policy and tier; the suite's requests are asked in order.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    requests: u32,
    /// Leave out each workflow's first N examples (e.g. the ones `joule tune --limit N`
    /// measured on), so quality is measured on held-out ones.
    #[arg(long, default_value_t = 0)]
    skip: usize,
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
    planning: PlanningArgs,
    #[command(flatten)]
    endpoints: EndpointArgs,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

fn bench_error(e: BenchError) -> AppError {
    match e {
        BenchError::Spec(errors) => AppError::spec(errors),
        other => AppError::invalid(other.to_string()),
    }
}

fn driver_error(e: DriverError) -> AppError {
    match e {
        DriverError::Bench(b) => bench_error(b),
        DriverError::App(a) => a,
    }
}

pub fn run(args: &Args, settings: Settings) -> Outcome {
    if args.planning.slo.is_some() {
        return Err(AppError::invalid(
            "joule bench takes its SLOs from the suite's tiers: use --slo-tier, not --slo",
        ));
    }
    if args.planning.model.is_some() {
        return Err(AppError::invalid(
            "joule bench compares how policies choose models: --model would pin them all alike",
        ));
    }
    let mut policies = Vec::new();
    for p in &args.policies {
        let policy: Strategy = p.trim().parse().map_err(|_| {
            AppError::invalid(format!(
                "--policies: unknown policy `{p}`; use static, greedy and/or joule"
            ))
        })?;
        if !policies.contains(&policy) {
            policies.push(policy);
        }
    }
    let assembly = Assembly::new(
        settings,
        args.planning.planning(),
        args.endpoints.endpoint.clone(),
    )?;
    let mut suite = Suite::load(&args.suite, &assembly.compile).map_err(bench_error)?;
    for e in &mut suite.entries {
        if args.skip >= e.requests.len() {
            return Err(AppError::invalid(format!(
                "--skip {}: `{}` has only {} examples",
                args.skip,
                e.name(),
                e.requests.len()
            )));
        }
        e.requests.drain(..args.skip);
    }
    let tiers: Vec<String> = args.tiers.iter().map(|t| t.trim().to_string()).collect();
    suite.check_tiers(&tiers).map_err(bench_error)?;
    let mode = if args.simulate {
        Mode::Simulated
    } else {
        Mode::Real
    };
    let env = driver::environment(&assembly, mode);
    let planned = match driver::plan_all(&suite, &assembly, &env, &tiers, &policies) {
        Ok(p) => p,
        Err(e) => return Ok(fail_as(e.into(), args.json)),
    };
    if !args.json {
        print_plans(&suite, &planned);
    }
    let mut results =
        Results::create(&args.out, mode).map_err(|e| AppError::invalid(format!("--out: {e}")))?;
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
        Mode::Real => {
            let cpu = joule_executor::devices::cpu();
            format!(
                "real (`{command}`): {} workflows x {} tier(s) x {} policies x {n} requests, the policies taking turns request by request, on {} ({} threads); plans from profiles {profiles_used}",
                suite.entries.len(),
                tiers.len(),
                policies.len(),
                cpu.model,
                cpu.threads
            )
        }
        Mode::Simulated => format!(
            "simulated (`{command}`): each request is its plan's prediction, for devices {} with profiles {profiles_used}",
            env.devices.join(", ")
        ),
    }];
    let finished = match mode {
        Mode::Simulated => {
            driver::simulate(&suite, &planned, n, &mut results).map_err(bench_error)?;
            true
        }
        Mode::Real => {
            let mut watch = progress::Requests(progress::items((n * planned.len()) as u64));
            runtime()?
                .block_on(async {
                    let cancel =
                        cancel_on_ctrl_c("interrupted: stopping; finished requests are kept");
                    driver::real(
                        &assembly,
                        &suite,
                        &planned,
                        n,
                        &args.out,
                        &mut results,
                        &mut notes,
                        &mut watch,
                        &cancel,
                    )
                    .await
                })
                .map_err(driver_error)?
        }
    };
    if !finished {
        notes.push("interrupted: these figures cover the requests that finished".into());
    }
    let written =
        driver::write_summary(&args.out, &suite, &results, mode, &notes).map_err(bench_error)?;
    if args.json {
        println!("{}", written.json);
    } else {
        print!("{}", written.markdown);
        println!(
            "wrote {}, {} and {} plots to {} in {:.1} s",
            results.path().display(),
            args.out.join("summary.md").display(),
            written.plots.len(),
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
            p.method.as_str(),
            p.plan.totals.latency_s,
            p.slo_s,
            p.plan.totals.energy_j,
            steps.join(" ")
        );
    }
    println!();
}
