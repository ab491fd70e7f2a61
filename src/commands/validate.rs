//! `joule validate FILE...`: is each workflow valid, and what does it compile to?

use std::path::PathBuf;
use std::process::ExitCode;

use joule_app::Settings;
use joule_planner::{Dag, SpecError};

use super::Outcome;
use crate::show::diagnostics;

#[derive(clap::Args)]
pub struct Args {
    /// Workflow files to check.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Print each file's compiled DAG (or its errors) as one JSON object per line.
    #[arg(long)]
    json: bool,
    /// The operator policy to check against (default `$JOULE_POLICY`).
    #[arg(long)]
    policy: Option<PathBuf>,
}

pub fn run(args: &Args, settings: &Settings) -> Outcome {
    // Pins are checked against the built-in catalog, as `joule plan` will check them.
    let catalog = joule_planner::catalog::Catalog::builtin();
    let ctx = joule_app::assembly::compile_context(&catalog, args.policy.as_deref(), settings)?;
    let mut all_valid = true;
    for path in &args.files {
        let result = joule_planner::load(path, &ctx);
        all_valid &= result.is_ok();
        if args.json {
            println!("{}", json(path, &result));
        } else {
            match &result {
                Ok(dag) => println!("{}", summary(path, dag)),
                Err(errors) => diagnostics::print(errors),
            }
        }
    }
    if !args.json && !all_valid && args.files.len() > 1 {
        eprintln!("some workflows are invalid");
    }
    Ok(if all_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn summary(path: &std::path::Path, dag: &Dag) -> String {
    format!(
        "ok {}: `{}`, {}, {}, critical path {}, up to {} in parallel",
        path.display(),
        dag.workflow.name,
        count(dag.workflow.steps.len(), "step"),
        count(dag.graph.edge_count(), "edge"),
        count(dag.critical_path.len(), "step"),
        dag.max_width,
    )
}

fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

fn json(path: &std::path::Path, result: &Result<Dag, Vec<SpecError>>) -> serde_json::Value {
    let file = path.display().to_string();
    match result {
        Ok(dag) => {
            let mut v = dag.to_json();
            v["file"] = file.into();
            v["valid"] = true.into();
            v
        }
        Err(errors) => serde_json::json!({
            "file": file,
            "valid": false,
            "errors": errors.iter().map(SpecError::to_json).collect::<Vec<_>>(),
        }),
    }
}
