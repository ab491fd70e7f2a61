//! `joule runs list | show | cancel`: what the run store holds, or with `--server URL` what a
//! `joule serve`'s run API holds for the caller's tenant (the key from `JOULE_API_KEY`).

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
    /// Ask a `joule serve` (its run API) instead of a local store.
    #[arg(long, global = true)]
    server: Option<String>,
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
        /// Only runs in this status (with --server): queued, running, succeeded, failed,
        /// cancelled.
        #[arg(long)]
        status: Option<String>,
        /// Only runs of this workflow (with --server).
        #[arg(long)]
        workflow: Option<String>,
    },
    /// One run: its report, or its events.
    Show {
        run: String,
        /// Print every event instead of the report.
        #[arg(long)]
        events: bool,
    },
    /// Cancel a run on a server (with --server): a queued one never starts, a running one
    /// stops and keeps what it finished.
    Cancel { run: String },
}

fn to_json(v: &impl serde::Serialize) -> Result<String, AppError> {
    serde_json::to_string(v).map_err(|e| AppError::failed(e.to_string()))
}

pub fn run(args: &Args, settings: &Settings) -> Outcome {
    if let Some(server) = &args.server {
        return remote(args, server, settings);
    }
    let path = store_path(&args.store, settings);
    if !path.exists() {
        return Err(AppError::invalid(format!(
            "no run store at {}; `joule run` creates it",
            path.display()
        )));
    }
    let store = Store::open(&path)?;
    match &args.command {
        Command::List {
            status: Some(_), ..
        }
        | Command::List {
            workflow: Some(_), ..
        } => {
            return Err(AppError::invalid(
                "--status and --workflow filter a server's runs; give --server URL",
            ));
        }
        Command::Cancel { .. } => {
            return Err(AppError::invalid(
                "cancel stops a run on a server; give --server URL (a local `joule run` stops with Ctrl-C)",
            ));
        }
        Command::List { limit, .. } => {
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

/// The same commands against a server's run API.
fn remote(args: &Args, server: &str, settings: &Settings) -> Outcome {
    use joule_planner::text::escape_controls;
    let client = super::server::Client::new(server, settings.run_api_key())?;
    super::runtime()?.block_on(async {
        match &args.command {
            Command::List {
                limit,
                status,
                workflow,
            } => {
                let mut query = vec![("limit", limit.to_string())];
                query.extend(status.clone().map(|s| ("status", s)));
                query.extend(workflow.clone().map(|w| ("workflow", w)));
                let q = query
                    .iter()
                    .map(|(k, v)| format!("{k}={}", encode(v)))
                    .collect::<Vec<_>>()
                    .join("&");
                let page = client.get(&format!("/v1/runs?{q}")).await?;
                if args.json {
                    println!("{page}");
                    return Ok(ExitCode::SUCCESS);
                }
                let runs = page["runs"].as_array().cloned().unwrap_or_default();
                if runs.is_empty() {
                    println!("no runs");
                }
                for r in runs {
                    let s = |k: &str| escape_controls(r[k].as_str().unwrap_or("")).into_owned();
                    println!(
                        "{:22}  {:20}  {:10}  {}",
                        s("id"),
                        s("workflow"),
                        s("status"),
                        s("submitted_at")
                    );
                }
            }
            Command::Show { run, events } => {
                if *events {
                    client.follow(run, |_, e| println!("{e}")).await?;
                } else {
                    let r = client.get(&format!("/v1/runs/{}", encode(run))).await?;
                    if args.json {
                        println!("{r}");
                    } else {
                        super::submit::show_result(&r);
                    }
                }
            }
            Command::Cancel { run } => {
                let r = client
                    .post(
                        &format!("/v1/runs/{}/cancel", encode(run)),
                        &serde_json::json!({}),
                        None,
                    )
                    .await?;
                if args.json {
                    println!("{r}");
                } else {
                    super::submit::show_result(&r);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Percent-encodes a path segment or query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
