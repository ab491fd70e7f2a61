//! What the model benchmarks share: the thread pool fitted to the CPUs before anything else
//! runs, the models to measure (those named on the command line, or every downloaded catalog
//! model, with a note for each that is not downloaded), and counts read from the environment.

use std::path::PathBuf;

use joule_models::store::State;
use joule_planner::catalog::Catalog;

pub struct Bench {
    pub settings: joule_app::Settings,
    pub threads: usize,
    names: Vec<String>,
}

/// Call first in `main`, before any thread is started (as `joule` does).
pub fn start() -> Bench {
    // SAFETY: called first in `main`, before any thread is started.
    unsafe { joule_app::settings::fit_pool_to_cpus() };
    Bench {
        settings: joule_app::Settings::from_env().unwrap_or_else(|e| panic!("{e}")),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        names: std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with("--"))
            .collect(),
    }
}

/// A count from the environment variable `name`, or `default`.
pub fn count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Bench {
    /// The catalog models to measure and their files.
    pub fn models(&self) -> Vec<(String, PathBuf)> {
        let store = self.settings.model_store();
        let mut out = Vec::new();
        for entry in Catalog::builtin()
            .models
            .iter()
            .filter(|m| m.source.is_some())
        {
            if !self.names.is_empty() && !self.names.contains(&entry.id) {
                continue;
            }
            match store.state(entry) {
                Ok(State::Present { path, .. }) => out.push((entry.id.clone(), path)),
                _ => println!(
                    "{:<20} not downloaded; run `joule models fetch {}`",
                    entry.id, entry.id
                ),
            }
        }
        out
    }
}
