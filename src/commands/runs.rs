//! `joule runs list | show`: what the run store holds.

use std::path::PathBuf;
use std::process::ExitCode;

use joule_app::{AppError, Settings};
use joule_executor::store::Store;

use super::{Outcome, store_path};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    /// The run store (default `$JOULE_HOME/runs.db`).
    #[arg(long, global = true)]
    store: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum Command {
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

fn to_json(v: &impl serde::Serialize) -> Result<String, AppError> {
    serde_json::to_string(v).map_err(|e| AppError::failed(e.to_string()))
}

pub fn run(args: &Args, settings: &Settings) -> Outcome {
    let path = store_path(&args.store, settings);
    if !path.exists() {
        return Err(AppError::invalid(format!(
            "no run store at {}; `joule run` creates it",
            path.display()
        )));
    }
    let store = Store::open(&path)?;
    match &args.command {
        Command::List { limit } => {
            let runs = store.list(*limit)?;
            if args.json {
                println!("{}", to_json(&runs)?);
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
                        r.status.as_str(),
                        r.created_at,
                        r.steps_done,
                        r.energy_j,
                        r.cost_usd
                    );
                }
            }
        }
        Command::Show { run, events } => {
            let stored = store.run(run)?;
            if *events {
                for e in store.events(run)? {
                    println!("{e}");
                }
            } else if args.json {
                println!("{}", to_json(&stored)?);
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
                match &stored.report {
                    Some(r) => print!("{}", r.to_text()),
                    None => println!(
                        "no report (the run did not end normally; `joule resume {}`)",
                        stored.id
                    ),
                }
                if let Some(e) = stored.error {
                    println!("error: {}", joule_planner::text::escape_controls(&e));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
