//! `joule submit FILE --server URL`: a workflow run sent to a `joule serve`'s run API. Prints
//! the run's id, or follows it to its end (`--follow` shows each step, `--wait` only the end)
//! and exits non-zero when it did not succeed.

use std::path::PathBuf;
use std::process::ExitCode;

use joule_app::AppError;
use joule_planner::text::escape_controls;
use serde_json::{Map, Value, json};

use super::server::{Client, event_line};
use super::{Outcome, runtime};

#[derive(clap::Args)]
pub struct Args {
    /// The workflow file.
    file: PathBuf,
    /// The server, e.g. `http://127.0.0.1:8080`; the key comes from `JOULE_API_KEY`.
    #[arg(long)]
    server: String,
    /// An input, `NAME=VALUE` (typed by the workflow's declaration); repeatable.
    #[arg(long = "input", value_name = "NAME=VALUE")]
    input: Vec<String>,
    /// Inputs from a JSON object file (`--input` pairs override it).
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// Makes a retried submission return the run the first one made.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Follow the run to its end, a line per step.
    #[arg(long, conflicts_with = "wait")]
    follow: bool,
    /// Wait for the run to end, printing only its result.
    #[arg(long)]
    wait: bool,
    /// Print JSON (with --follow, one event per line, then the run).
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args, settings: &joule_app::Settings) -> Outcome {
    let source = joule_planner::spec::read_source(&args.file).map_err(AppError::spec)?;
    // The workflow's own declarations type `--input` values; the server checks the rest.
    let workflow = joule_planner::spec::parse(&source).map_err(AppError::spec)?;
    let mut inputs = match &args.inputs {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| AppError::invalid(format!("--inputs {}: {e}", path.display())))?;
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(m)) => m,
                _ => {
                    return Err(AppError::invalid(format!(
                        "--inputs {}: expected a JSON object",
                        path.display()
                    )));
                }
            }
        }
        None => Map::new(),
    };
    for kv in &args.input {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(AppError::invalid(format!(
                "--input `{}`: expected NAME=VALUE",
                escape_controls(kv)
            )));
        };
        let value = joule_executor::runtime::inputs::parse_text(&workflow, k.trim(), v)
            .map_err(|e| AppError::invalid(format!("--input: {e}")))?;
        inputs.insert(k.trim().to_string(), value);
    }
    let client = Client::new(&args.server, settings.run_api_key())?;
    runtime()?.block_on(async {
        let body = json!({"yaml": source.text(), "inputs": inputs});
        let accepted = client
            .post("/v1/runs", &body, args.idempotency_key.as_deref())
            .await?;
        let id = accepted["id"].as_str().unwrap_or("").to_string();
        if !(args.follow || args.wait) {
            if args.json {
                println!("{accepted}");
            } else {
                println!("{id}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("joule submit: run {id} accepted ({})", accepted["status"]);
        client
            .follow(&id, |_, event| {
                if !args.follow {
                    return;
                }
                if args.json {
                    println!("{event}");
                } else if let Some(line) = event_line(event) {
                    println!("{line}");
                }
            })
            .await?;
        let run = client.get(&format!("/v1/runs/{id}")).await?;
        if args.json {
            println!("{run}");
        } else {
            show_result(&run);
        }
        Ok(if run["status"] == "succeeded" {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

/// A run's end for a terminal: status, error, outputs.
pub fn show_result(run: &Value) {
    println!(
        "run {}: {}",
        escape_controls(run["id"].as_str().unwrap_or("")),
        escape_controls(run["status"].as_str().unwrap_or(""))
    );
    if let Some(e) = run["error"].as_str() {
        println!("error: {}", escape_controls(e));
    }
    if let Some(outputs) = run["outputs"].as_object() {
        for (k, v) in outputs {
            let text = match v {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            println!("{k}: {}", escape_controls(&text));
        }
    }
}
