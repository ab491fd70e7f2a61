//! `joule audit RUN [--verify]`: a run's audit log (every model call by config, tokens and
//! hashes of prompt and answer; every tool call with its arguments, outcome and sandbox layers;
//! re-plans and fallbacks) and whether its hash chain is intact.

use std::path::PathBuf;
use std::process::ExitCode;

use joule_app::Settings;
use joule_executor::audit;
use joule_executor::store::Store;

use super::{Outcome, store_path};

#[derive(clap::Args)]
pub struct Args {
    /// The run's id (`joule runs list`).
    run: String,
    /// Check the hash chain; exit 1 when an event was changed, removed or cut off.
    #[arg(long)]
    verify: bool,
    /// The run store (default `$JOULE_HOME/runs.db`).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args, settings: &Settings) -> Outcome {
    let store = Store::open(&store_path(&args.store, settings))?;
    let (rows, head) = store.audit(&args.run)?;
    let verdict = args
        .verify
        .then(|| audit::verify(&args.run, &rows, head.as_deref()));
    let entries: Vec<audit::Entry> = rows.iter().map(audit::entry).collect();
    if args.json {
        let verified = verdict.as_ref().map(|v| match v {
            Ok(n) => serde_json::json!({ "ok": true, "events": n }),
            Err(b) => serde_json::json!({ "ok": false, "error": b.to_string(), "broken": b }),
        });
        println!(
            "{}",
            serde_json::json!({ "run_id": args.run, "head": head, "events": entries, "verify": verified })
        );
    } else {
        for e in &entries {
            println!(
                "{:>5} {:>9.3}s {:<16} {}",
                e.seq,
                e.at_s,
                e.kind,
                joule_planner::text::escape_controls(&e.detail.to_string())
            );
        }
        println!("chain head: {}", head.as_deref().unwrap_or("(none)"));
        match &verdict {
            Some(Ok(n)) => println!("verified: {n} events, chain intact"),
            Some(Err(b)) => eprintln!("audit chain broken: {b}"),
            None => {}
        }
    }
    Ok(match verdict {
        Some(Err(_)) => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    })
}
