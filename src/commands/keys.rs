//! `joule keys create --tenant NAME`: an API key for the run API. The key is printed once and
//! only its sha256 is kept (in the run store the server reads), so a leaked store leaks no key.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use joule_app::{AppError, Settings};
use joule_executor::queue::Queue;

use super::{Outcome, store_path};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Make a key for a tenant; it is shown once.
    Create {
        /// The tenant the key's requests belong to (a name in the server's `--tenants` file,
        /// if it has one).
        #[arg(long)]
        tenant: String,
        /// The run store the server uses (default `$JOULE_HOME/runs.db`).
        #[arg(long)]
        store: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: &Args, settings: &Settings) -> Outcome {
    match &args.command {
        Command::Create {
            tenant,
            store,
            json,
        } => {
            let valid = !tenant.is_empty()
                && tenant.len() <= 64
                && tenant
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !valid {
                return Err(AppError::invalid(
                    "--tenant: 1 to 64 of letters, digits, `-`, `_` and `.`",
                ));
            }
            let mut secret = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut secret))
                .map_err(|e| AppError::failed(format!("no randomness for a key: {e}")))?;
            let key = format!("jk_{}", hex::encode(secret));
            let path = store_path(store, settings);
            Queue::open(&path)?.add_key(tenant, &key)?;
            if *json {
                println!(
                    "{}",
                    serde_json::json!({"tenant": tenant, "key": key, "store": path})
                );
            } else {
                println!("{key}");
                eprintln!(
                    "joule keys: a key for tenant `{tenant}` in {} (shown only now; send it as \
                     `Authorization: Bearer KEY`, or set JOULE_API_KEY for `joule submit`)",
                    path.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
