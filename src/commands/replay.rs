//! `joule replay RUN`: run a finished run again from its recorded answers, and check that it
//! sends the same calls and gets the same outputs.

use std::path::PathBuf;
use std::process::ExitCode;

use joule_app::Settings;
use joule_app::runs;

use super::{Outcome, runtime, store_path};

#[derive(clap::Args)]
pub struct Args {
    /// The run to replay.
    run: String,
    /// The run store (default `$JOULE_HOME/runs.db`).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args, settings: Settings) -> Outcome {
    let path = store_path(&args.store, &settings);
    let r = runtime()?.block_on(runs::replay(settings, &path, &args.run))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&r).map_err(|e| joule_app::AppError::failed(e.to_string()))?
        );
    } else if r.reproduced {
        println!(
            "replayed run {} from {} recorded calls: every prompt and output reproduced",
            r.run_id, r.recorded_calls
        );
    } else {
        eprintln!(
            "replay of run {} did NOT reproduce it: {}",
            r.run_id,
            r.error.clone().unwrap_or_else(|| format!(
                "outputs differ: recorded {}, replayed {}",
                r.recorded_outputs, r.outputs
            ))
        );
    }
    Ok(if r.reproduced {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
