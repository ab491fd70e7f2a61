//! `joule models`: what the catalog's local models are, whether they are on this machine,
//! fetching and verifying them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args as ClapArgs, Subcommand};
use joule_app::{AppError, Settings};
use joule_models::store::{ModelStore, State};
use joule_planner::catalog::{Catalog, Model};

#[derive(ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    /// A catalog file instead of the built-in one (to register your own GGUF files).
    #[arg(long, global = true)]
    catalog: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// List the catalog's models and whether each is on this machine.
    List,
    /// Download, assemble and verify models (all local models when none are named).
    Fetch { ids: Vec<String> },
    /// Print where a model's GGUF file is.
    Path { id: String },
    /// Re-hash model files and compare with the catalog (all present models when none are named).
    Verify { ids: Vec<String> },
}

pub fn run(args: &Args, settings: &Settings) -> super::Outcome {
    let catalog = joule_app::assembly::catalog(args.catalog.as_deref())?;
    let store = settings.model_store();
    match &args.command {
        Command::List => list(&catalog, &store, args.json),
        Command::Fetch { ids } => fetch(&catalog, &store, ids, args.json),
        Command::Path { id } => path(&catalog, &store, id),
        Command::Verify { ids } => verify(&catalog, &store, ids, args.json),
    }
}

fn pick<'a>(catalog: &'a Catalog, ids: &[String]) -> Result<Vec<&'a Model>, AppError> {
    if ids.is_empty() {
        return Ok(catalog
            .models
            .iter()
            .filter(|m| m.source.is_some())
            .collect());
    }
    ids.iter().map(|id| find(catalog, id)).collect()
}

fn find<'a>(catalog: &'a Catalog, id: &str) -> Result<&'a Model, AppError> {
    catalog.model(id).ok_or_else(|| {
        let ids: Vec<&str> = catalog.models.iter().map(|m| m.id.as_str()).collect();
        let hint = joule_planner::diag::did_you_mean(id, ids.iter().copied())
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        AppError::invalid(format!(
            "unknown model `{id}`{hint}; the catalog has: {}",
            ids.join(", ")
        ))
    })
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn list(catalog: &Catalog, store: &ModelStore, json: bool) -> super::Outcome {
    let rows: Vec<(&Model, State)> = catalog
        .models
        .iter()
        .map(|m| {
            Ok((
                m,
                store
                    .state(m)
                    .map_err(|e| AppError::failed(e.to_string()))?,
            ))
        })
        .collect::<Result<_, AppError>>()?;
    if json {
        for (m, state) in &rows {
            let line = serde_json::json!({
                "id": m.id,
                "arch": m.arch,
                "quantization": m.quantization,
                "size_bytes": m.size_bytes,
                "sha256": m.sha256,
                "status": state,
            });
            println!("{line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!("models in {}", store.home().display());
    println!(
        "{:<20} {:<6} {:<7} {:>10}  {:<9} path",
        "id", "arch", "quant", "size", "state"
    );
    for (m, state) in rows {
        let (label, path) = match &state {
            State::Present { path, .. } => ("present".to_string(), path.display().to_string()),
            State::Missing {
                path,
                partial_bytes: 0,
            } => ("missing".to_string(), path.display().to_string()),
            State::Missing {
                path,
                partial_bytes,
            } => (
                format!("partial {}", mb(*partial_bytes)),
                path.display().to_string(),
            ),
            State::Remote => ("remote".to_string(), "(served by an endpoint)".to_string()),
        };
        println!(
            "{:<20} {:<6} {:<7} {:>10}  {:<9} {}",
            m.id,
            m.arch.as_deref().unwrap_or("-"),
            m.quantization.as_deref().unwrap_or("-"),
            m.size_bytes.map(mb).unwrap_or_else(|| "-".into()),
            label,
            path
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn fetch(catalog: &Catalog, store: &ModelStore, ids: &[String], json: bool) -> super::Outcome {
    let models = pick(catalog, ids)?;
    let runtime = super::runtime()?;
    let bar = crate::show::progress::Bytes::new();
    let mut failed = false;
    for model in models {
        let started = Instant::now();
        match runtime.block_on(store.fetch(model, &bar)) {
            Ok((path, fetched)) => {
                let seconds = started.elapsed().as_secs_f64();
                if json {
                    let line = serde_json::json!({"id": model.id, "ok": true, "path": path, "fetched": fetched, "seconds": seconds});
                    println!("{line}");
                } else if fetched {
                    println!(
                        "{}: fetched and verified in {seconds:.1} s -> {}",
                        model.id,
                        path.display()
                    );
                } else {
                    println!("{}: already present at {}", model.id, path.display());
                }
            }
            Err(e) => {
                failed = true;
                report_error(json, model, &e);
            }
        }
    }
    Ok(exit(failed))
}

fn path(catalog: &Catalog, store: &ModelStore, id: &str) -> super::Outcome {
    let model = find(catalog, id)?;
    let path = store
        .require(model)
        .map_err(|e| AppError::failed(e.to_string()))?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}

fn verify(catalog: &Catalog, store: &ModelStore, ids: &[String], json: bool) -> super::Outcome {
    let models: Vec<&Model> = if ids.is_empty() {
        catalog
            .models
            .iter()
            .filter(|m| matches!(store.state(m), Ok(State::Present { .. })))
            .collect()
    } else {
        pick(catalog, ids)?
    };
    if models.is_empty() {
        eprintln!("no models are present to verify; run `joule models fetch` first");
        return Ok(ExitCode::FAILURE);
    }
    let bar = crate::show::progress::Bytes::new();
    let mut failed = false;
    for model in models {
        match store.verify(model, &bar) {
            Ok(v) => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"id": model.id, "ok": true, "checked": v.checked, "sha256": v.sha256, "bytes": v.bytes})
                    );
                } else if v.checked {
                    println!("{}: ok ({}, sha256 {})", model.id, mb(v.bytes), v.sha256);
                } else {
                    println!(
                        "{}: sha256 {} (the catalog gives none to compare with)",
                        model.id, v.sha256
                    );
                }
            }
            Err(e) => {
                failed = true;
                report_error(json, model, &e);
            }
        }
    }
    Ok(exit(failed))
}

/// One model's failure: a JSON line on stdout with `--json`, else a line on stderr.
fn report_error(json: bool, model: &Model, e: &dyn std::fmt::Display) {
    if json {
        println!(
            "{}",
            serde_json::json!({"id": model.id, "ok": false, "error": e.to_string()})
        );
    } else {
        eprintln!("error: {}: {e}", model.id);
    }
}

fn exit(failed: bool) -> ExitCode {
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
