//! `joule tune`: measures each llm step of a workflow on its own examples against the step's
//! reference model and writes step-level quality into the machine profile (the method is
//! `joule_lab::tune`'s).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use joule_app::profiles::{machine_profile, measured_header, write};
use joule_app::{AppError, Assembly, Settings};
use joule_lab::examples;
use joule_lab::tune::{self, Journal};
use joule_planner::profile::StepQuality;
use joule_planner::quality::Z95;

use super::{EndpointArgs, Outcome, PlanningArgs, cancel_on_ctrl_c, runtime};
use crate::show::progress;

#[derive(clap::Args)]
pub struct Args {
    /// The workflow; its `examples:` say how its outputs are scored.
    file: PathBuf,
    /// Examples to measure on instead of the workflow's own file (same JSONL format).
    #[arg(long)]
    examples: Option<PathBuf>,
    /// Candidate models, comma-separated (default: every model each step may run on here).
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Use only the first N examples.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    limit: Option<u32>,
    /// Start again instead of continuing an interrupted tune of the same design.
    #[arg(long)]
    fresh: bool,
    /// The journal of finished runs (default: `$JOULE_HOME/tune/WORKFLOW-KEY.jsonl`, keyed by
    /// the workflow, its examples, the references and the candidates).
    #[arg(long)]
    journal: Option<PathBuf>,
    /// The profile the figures are written into (default: this machine's profile).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    planning: PlanningArgs,
    #[command(flatten)]
    endpoints: EndpointArgs,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args, settings: Settings) -> Outcome {
    if args.planning.slo.is_some() || args.planning.objective.is_some() {
        return Err(AppError::invalid(
            "joule tune measures quality, which no SLO or objective changes: drop --slo and --objective",
        ));
    }
    if args.planning.model.is_some() {
        return Err(AppError::invalid(
            "joule tune compares models step by step: use --models to choose the candidates, not --model",
        ));
    }
    let assembly = Assembly::new(
        settings,
        args.planning.planning(),
        args.endpoints.endpoint.clone(),
    )?;
    let source = joule_planner::spec::read_source(&args.file).map_err(AppError::spec)?;
    let dag = assembly.compile(&source)?;
    let bad = |e: examples::ExamplesError| AppError::invalid(e.to_string());
    let scores = examples::scores_of(&dag, &args.file).map_err(bad)?;
    let path = match &args.examples {
        Some(p) => p.clone(),
        None => examples::path_of(&dag, &args.file).expect("a workflow with scores names its file"),
    };
    let mut items = examples::read(&path, &dag, scores).map_err(bad)?;
    if let Some(n) = args.limit {
        items.truncate(n as usize);
    }
    let env = assembly.environment();
    let design = tune::design(&assembly, &dag, &env, args.models.as_deref(), scores)?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| AppError::invalid(format!("{}: {e}", path.display())))?;
    let journal_path = args.journal.clone().unwrap_or_else(|| {
        assembly.settings.home().join("tune").join(format!(
            "{}-{}.jsonl",
            dag.workflow.name,
            design.key(&text)
        ))
    });
    if args.fresh {
        let _ = std::fs::remove_file(&journal_path);
    }
    let mut journal = Journal::open(&journal_path, &design.key(&text))?;
    let eval_name = format!("examples {}", file_name(&path));
    if !args.json {
        for (step, model) in &design.references {
            let others: Vec<&str> = design
                .cells
                .iter()
                .filter(|(s, _)| s == step)
                .map(|(_, m)| m.as_str())
                .collect();
            let free: Vec<&str> = design
                .free
                .iter()
                .filter(|(s, _)| s == step)
                .map(|(_, m)| m.as_str())
                .collect();
            if free.is_empty() {
                println!(
                    "{step}: reference {model}; measured against it: {}",
                    if others.is_empty() {
                        "nothing (no other candidate)".to_string()
                    } else {
                        others.join(", ")
                    }
                );
            } else {
                println!(
                    "{step}: reference {model}; no scored output reads it, so {} keep the scores (loss 0, not run)",
                    free.join(", ")
                );
            }
        }
        let runs = items.len() * (1 + design.cells.len());
        println!(
            "{} examples x {} configurations = {runs} runs ({} already in {})",
            items.len(),
            1 + design.cells.len(),
            journal.entries().len().min(runs),
            journal_path.display()
        );
    }
    let workspace = {
        let dir = args
            .file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
    };
    let total = (items.len() * (1 + design.cells.len())) as u64;
    let mut watch = progress::Requests(progress::items(total));
    let outcome = runtime()?.block_on(async {
        let cancel = cancel_on_ctrl_c(
            "interrupted: stopping; finished runs are kept and `joule tune` continues from them",
        );
        tune::run(
            &assembly,
            &design,
            &items,
            scores,
            &workspace,
            &mut journal,
            &eval_name,
            &mut watch,
            &cancel,
        )
        .await
    })?;
    let (out, mut profile) = machine_profile(&assembly.settings, args.out.as_deref())?;
    profile.step_quality.retain(|q| {
        !outcome
            .figures
            .iter()
            .any(|f| f.workflow == q.workflow && f.step == q.step && f.model == q.model)
    });
    profile.step_quality.extend(outcome.figures.iter().cloned());
    write(&out, &profile, &measured_header())?;
    if args.json {
        let json = serde_json::json!({
            "profile": out,
            "journal": journal_path,
            "finished": outcome.finished,
            "ran": outcome.ran,
            "figures": outcome.figures,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        );
    } else {
        print!("{}", table(&outcome.figures));
        println!(
            "{} into {}{}",
            if outcome.finished {
                "written"
            } else {
                "interrupted; what finished is written"
            },
            out.display(),
            if outcome.finished {
                String::new()
            } else {
                " (run the same command again to continue)".into()
            }
        );
    }
    Ok(if outcome.finished {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(130)
    })
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The figures for people: each config's score, its paired loss and the bound the planner uses.
fn table(figures: &[StepQuality]) -> String {
    let mut out = format!(
        "{:<14} {:<22} {:>4} {:>14} {:>16} {:>10}\n",
        "step", "model", "n", "score", "loss vs ref", "loss bound"
    );
    for f in figures {
        let reference = f.model == f.reference;
        out.push_str(&format!(
            "{:<14} {:<22} {:>4} {:>14} {:>16} {:>10}\n",
            f.step,
            f.model,
            f.n,
            format!("{:.3} ± {:.3}", f.value, f.se),
            if reference {
                "reference".to_string()
            } else {
                format!("{:+.3} ± {:.3}", f.loss, f.loss_se)
            },
            if reference {
                "-".to_string()
            } else {
                format!("{:.3}", (f.loss + Z95 * f.loss_se).max(0.0))
            },
        ));
    }
    out
}
