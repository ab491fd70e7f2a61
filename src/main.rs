//! The `joule` command line. Each command lives in its own module and only parses arguments,
//! calls the library crates and prints; no planning or execution logic lives here.

mod audit;
mod bench;
mod devices;
mod diagnostics;
mod eval;
mod generate;
mod graph;
mod models;
mod plan;
mod profile;
mod progress;
mod run;
mod schema;
mod serve;
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
    /// List, fetch, locate and verify the catalog's local models.
    Models(models::Args),
    /// Run one prompt through a local model.
    Generate(generate::Args),
    /// Serve the local models over an OpenAI-compatible HTTP API.
    Serve(serve::Args),
    /// Plan a workflow, run it, and report what it cost against the plan.
    Run(run::Args),
    /// Finish a run that was interrupted or failed, without redoing finished steps.
    Resume(run::ResumeArgs),
    /// Re-run a recorded run from its recorded model and tool outputs, and check it reproduces.
    Replay(run::ReplayArgs),
    /// List and show stored runs.
    Runs(run::RunsArgs),
    /// Measure this machine's local models and write the profile the planner reads.
    Profile(profile::Args),
    /// Score models on each kind of task and write the quality into the machine profile.
    Eval(eval::Args),
    /// A run's audit log, and whether its hash chain is intact.
    Audit(audit::Args),
    /// What joule detects here: CPU, NVIDIA GPUs, energy counters, endpoints.
    Devices(devices::Args),
    /// Compare joule's plans with the static and greedy baselines on a benchmark suite.
    Bench(bench::Args),
}

/// A tokio runtime for the commands that do network work.
fn runtime() -> miette::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| miette::miette!("cannot start the async runtime: {e}"))
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings, and joule's own info lines).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,joule=info,joule_executor=info")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Validate(args) => validate::run(&args),
        Command::Graph(args) => graph::run(&args),
        Command::Plan(args) => plan::run(&args),
        Command::Schema => schema::run(),
        Command::Models(args) => models::run(&args),
        Command::Generate(args) => generate::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Resume(args) => run::resume(&args),
        Command::Replay(args) => run::replay(&args),
        Command::Runs(args) => run::runs(&args),
        Command::Profile(args) => profile::run(&args),
        Command::Devices(args) => devices::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Audit(args) => audit::run(&args),
        Command::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::from(2)
        }
    }
}
