//! The `joule` command line. Each command lives in `commands/` and only parses arguments,
//! calls the libraries and prints; `show/` holds what every command prints the same way
//! (errors with their source lines, progress bars, the live run display).

mod commands;
mod show;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::{
    audit, bench, devices, eval, generate, graph, keys, models, plan, profile, replay, run, runs,
    schema, serve, submit, tune, validate,
};

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
    Replay(replay::Args),
    /// List and show stored runs.
    Runs(runs::Args),
    /// Measure this machine's local models and write the profile the planner reads.
    Profile(profile::Args),
    /// Score models on each kind of task and write the quality into the machine profile.
    Eval(eval::Args),
    /// Measure each llm step of a workflow on its own examples against its reference model.
    Tune(tune::Args),
    /// A run's audit log, and whether its hash chain is intact.
    Audit(audit::Args),
    /// What joule detects here: CPU, NVIDIA GPUs, energy counters, endpoints.
    Devices(devices::Args),
    /// Compare joule's plans with the static and greedy baselines on a benchmark suite.
    Bench(bench::Args),
    /// Make API keys for the run API's tenants.
    Keys(keys::Args),
    /// Submit a workflow run to a `joule serve` (and follow it with `--follow` or `--wait`).
    Submit(submit::Args),
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings, and joule's own info lines).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,joule=info,joule_app=info,joule_executor=info,joule_models=info",
        )
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn main() -> ExitCode {
    // SAFETY: first thing in `main`, before any thread is started.
    unsafe { joule_app::settings::fit_pool_to_cpus() };
    // Inside a tool's box, `joule` is the inner-walls helper (see `joule_sandbox::enter`).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == joule_sandbox::enter::JOULE_SUBCOMMAND)
    {
        return joule_sandbox::enter::main(std::env::args_os().skip(2).collect());
    }
    let cli = Cli::parse();
    init_tracing();
    let settings = match joule_app::Settings::from_env() {
        Ok(s) => s,
        Err(e) => return show::diagnostics::fail(e.into()),
    };
    let result = match cli.command {
        Command::Validate(args) => validate::run(&args, &settings),
        Command::Graph(args) => graph::run(&args),
        Command::Plan(args) => plan::run(&args, settings),
        Command::Schema => schema::run(),
        Command::Models(args) => models::run(&args, &settings),
        Command::Generate(args) => generate::run(&args, &settings),
        Command::Serve(args) => serve::run(&args, &settings),
        Command::Run(args) => run::run(&args, settings),
        Command::Resume(args) => run::resume(&args, settings),
        Command::Replay(args) => replay::run(&args, settings),
        Command::Runs(args) => runs::run(&args, &settings),
        Command::Profile(args) => profile::run(&args, settings),
        Command::Devices(args) => devices::run(&args),
        Command::Eval(args) => eval::run(&args, settings),
        Command::Tune(args) => tune::run(&args, settings),
        Command::Audit(args) => audit::run(&args, &settings),
        Command::Bench(args) => bench::run(&args, settings),
        Command::Keys(args) => keys::run(&args, &settings),
        Command::Submit(args) => submit::run(&args, &settings),
    };
    match result {
        Ok(code) => code,
        Err(e) => show::diagnostics::fail(e),
    }
}
