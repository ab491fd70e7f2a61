//! The `joule` command line. Each command lives in its own module and only parses arguments,
//! calls the library crates and prints; no planning or execution logic lives here.

mod diagnostics;
mod graph;
mod plan;
mod schema;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Plans and runs multi-step AI agent workflows under latency, energy and cost budgets.
#[derive(Parser)]
#[command(name = "joule", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check workflow files and show what they compile to.
    Validate(validate::Args),
    /// Draw a workflow's DAG as Graphviz DOT or Mermaid.
    Graph(graph::Args),
    /// Choose a model and device for every step within the budgets.
    Plan(plan::Args),
    /// Print the JSON Schema of the workflow language.
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(args) => validate::run(&args),
        Command::Graph(args) => graph::run(&args),
        Command::Plan(args) => plan::run(&args),
        Command::Schema => schema::run(),
    };
    match result {
        Ok(code) => code,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::from(2)
        }
    }
}
