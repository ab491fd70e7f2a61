//! `joule run` and `joule resume`: plan a workflow (or take a stored run's plan), run it with
//! its record kept, and report what it cost against what was predicted.

use std::path::PathBuf;
use std::process::ExitCode;

use joule_app::runs::{self, Finished, Keep, Resumable};
use joule_app::{AppError, Assembly, Settings};
use joule_executor::runtime::RunStatus;
use joule_planner::text::escape_controls;

use super::{EndpointArgs, Outcome, PlanningArgs, cancel_on_ctrl_c, runtime, store_path};
use crate::show::diagnostics::fail_as;
use crate::show::events::Display;

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
    /// The right values of the workflow's scored outputs (its `examples: score:`), as JSON:
    /// an object keyed by output, or the bare value when one output is scored. The run's
    /// answers are scored and the tuned figures its plan used learn from the score.
    #[arg(long, value_name = "JSON")]
    expected: Option<String>,
    #[command(flatten)]
    planning: PlanningArgs,
    #[command(flatten)]
    endpoints: EndpointArgs,
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

pub fn run(args: &Args, settings: Settings) -> Outcome {
    let json = args.output.json;
    let started = (|| {
        let mut assembly = Assembly::new(
            settings.clone(),
            args.planning.planning(),
            args.endpoints.endpoint.clone(),
        )?;
        let unmeasured = joule_lab::first_run::unmeasured(&assembly);
        if !unmeasured.is_empty() {
            let cpu = joule_executor::devices::cpu();
            eprintln!(
                "no measured speeds for {} on this CPU ({}, {} threads): measuring them quickly before planning (`joule profile` measures fully; JOULE_FIRST_MEASURE=0 skips this)",
                unmeasured.join(", "),
                cpu.model,
                cpu.threads
            );
            let seconds = joule_lab::first_run::measure(&assembly, &unmeasured, &mut |what| {
                tracing::debug!("{what}")
            })?;
            eprintln!(
                "measured in {seconds:.1} s -> {}",
                assembly.settings.machine_profile_path().display()
            );
            assembly = Assembly::new(
                settings,
                args.planning.planning(),
                args.endpoints.endpoint.clone(),
            )?;
        }
        let spec = runs::load(&assembly, &args.file, args.inputs.as_deref(), &args.input)?;
        let expected = match &args.expected {
            None => None,
            Some(text) => {
                let raw = serde_json::from_str(text).map_err(|e| {
                    AppError::invalid(format!(
                        "--expected: not JSON ({e}); quote a string as '\"billing\"'"
                    ))
                })?;
                Some(joule_lab::feedback::expected(
                    &spec.dag,
                    &args.file,
                    &spec.inputs,
                    raw,
                )?)
            }
        };
        let ready = runs::prepare(&assembly, spec, None)?;
        Ok::<_, AppError>((assembly, ready, expected))
    })();
    let (assembly, ready, expected) = match started {
        Ok(r) => r,
        Err(e) => return Ok(fail_as(e, json)),
    };
    execute(&assembly, ready, &args.output, expected.as_ref())
}

pub fn resume(args: &ResumeArgs, settings: Settings) -> Outcome {
    if args.output.no_store {
        return Err(AppError::invalid(
            "resume continues a stored run; drop --no-store",
        ));
    }
    let path = store_path(&args.output.store, &settings);
    match runs::resumable(settings, &path, &args.run)? {
        Resumable::Done { run_id } => {
            eprintln!(
                "run {run_id} already succeeded; `joule runs show {run_id}` prints its report"
            );
            Ok(ExitCode::SUCCESS)
        }
        Resumable::Ready {
            assembly,
            ready,
            finished_steps,
            total_steps,
        } => {
            eprintln!(
                "resuming run {}: {finished_steps} of {total_steps} steps already finished",
                args.run
            );
            let output = Output {
                store: Some(path),
                ..args.output.clone()
            };
            execute(&assembly, *ready, &output, None)
        }
    }
}

/// Runs, then reports: the plan first (a new run), live progress, the report, the outputs.
fn execute(
    assembly: &Assembly,
    ready: runs::Ready,
    out: &Output,
    expected: Option<&joule_lab::feedback::Expected>,
) -> Outcome {
    if ready.floors_set_aside > 0 {
        eprintln!(
            "note: --model: every llm step runs on it; {} quality floor(s) are not enforced",
            ready.floors_set_aside
        );
    }
    if !out.json && !ready.is_resume() {
        print!("{}", ready.plan.to_text());
        println!();
    }
    let keep = Keep {
        store: (!out.no_store).then(|| store_path(&out.store, &assembly.settings)),
        trace: out.trace.clone(),
        calibrate: !out.no_calibrate,
        run_id: None,
    };
    let mut display = Display::new(!out.json);
    let (plan, workspace) = (ready.plan.clone(), ready.workspace().to_path_buf());
    let finished = runtime()?.block_on(async {
        let cancel =
            cancel_on_ctrl_c("interrupted: stopping running steps and recording what finished");
        let finished = runs::execute(assembly, ready, &keep, &mut display, &cancel).await?;
        if let Some(expected) = expected
            && finished.outcome.status == RunStatus::Succeeded
        {
            let s = joule_lab::feedback::observe(
                assembly,
                &workspace,
                &plan,
                &finished.outcome.outputs,
                expected,
                &cancel,
            )
            .await?;
            eprintln!(
                "scored {:.2} against --expected{}; {} tuned figure(s) learned from it",
                s.score,
                if s.details.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", escape_controls(&s.details.join("; ")))
                },
                s.figures
            );
        }
        Ok::<_, AppError>(finished)
    })?;
    display.finish();
    report(&finished, out)
}

fn report(f: &Finished, out: &Output) -> Outcome {
    if let Some(Err(e)) = &f.calibration {
        eprintln!("not calibrating: {}", escape_controls(&e.to_string()));
    }
    if let Some(dir) = &out.report {
        write_report(&f.report, dir)?;
    }
    if out.json {
        println!("{}", f.report.to_json());
    } else {
        print!("{}", f.report.to_text());
        if f.outcome.status == RunStatus::Succeeded {
            println!("\noutputs:");
            if let serde_json::Value::Object(o) = &f.outcome.outputs {
                for (k, v) in o {
                    let text = v.as_str().map_or(v.to_string(), str::to_string);
                    println!("  {k}: {}", escape_controls(&text));
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
        if f.outcome.status != RunStatus::Succeeded && f.stored {
            eprintln!("finish it with `joule resume {}`", f.run_id);
        }
    }
    Ok(match f.outcome.status {
        RunStatus::Succeeded => ExitCode::SUCCESS,
        RunStatus::Cancelled => ExitCode::from(130),
        _ => ExitCode::FAILURE,
    })
}

/// `report.json` and `timeline.svg` into `dir`.
fn write_report(
    report: &joule_executor::report::Report,
    dir: &std::path::Path,
) -> Result<(), AppError> {
    let failed = |what: &std::path::Path, e: &dyn std::fmt::Display| {
        AppError::failed(format!("--report {}: {e}", what.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| failed(dir, &e))?;
    let json = serde_json::to_string_pretty(&report.to_json()).map_err(|e| failed(dir, &e))?;
    let path = dir.join("report.json");
    std::fs::write(&path, json + "\n").map_err(|e| failed(&path, &e))?;
    let svg = joule_lab::plot::timeline::timeline(report).map_err(|e| failed(dir, &e))?;
    let path = dir.join("timeline.svg");
    std::fs::write(&path, svg).map_err(|e| failed(&path, &e))
}
