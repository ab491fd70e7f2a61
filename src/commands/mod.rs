//! One module per command, and what several commands take alike: the planning flags, the
//! run store, endpoint overrides, the async runtime and Ctrl-C.

pub mod audit;
pub mod bench;
pub mod devices;
pub mod eval;
pub mod generate;
pub mod graph;
pub mod keys;
pub mod models;
pub mod plan;
pub mod profile;
pub mod replay;
pub mod run;
pub mod runs;
pub mod schema;
pub mod serve;
pub mod server;
pub mod submit;
pub mod tune;
pub mod validate;

use std::path::PathBuf;

use joule_app::{AppError, EndpointUrl, Planning, Settings};
use joule_call::Cancel;
use joule_planner::spec::{Objective, units};

/// What a command returns: an exit code, or an error `show::diagnostics` explains.
pub type Outcome = Result<std::process::ExitCode, AppError>;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ObjectiveArg {
    Energy,
    Cost,
    Latency,
}

/// What planning depends on, shared by `plan`, `run`, `bench` and `tune`.
#[derive(clap::Args, Clone)]
pub struct PlanningArgs {
    /// What to minimise (default: the workflow's `objective`).
    #[arg(long, value_enum)]
    pub objective: Option<ObjectiveArg>,
    /// Replace the workflow's latency SLO, e.g. `45s`.
    #[arg(long, value_parser = parse_slo)]
    pub slo: Option<f64>,
    /// Extra profile files, merged over the reference figures (measured beats published).
    #[arg(long = "profiles", num_args = 1..)]
    pub profiles: Vec<PathBuf>,
    /// A catalog file instead of the built-in one.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// The operator policy, which workflows cannot widen (default `$JOULE_POLICY`).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Local devices to plan for, comma-separated (default: what this machine has).
    #[arg(long, value_delimiter = ',')]
    pub devices: Option<Vec<String>>,
    /// The solver's time limit in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub time_limit: f64,
    /// Run every llm step on this model, setting its quality floors aside (for a machine that
    /// has one small model, or to compare models).
    #[arg(long)]
    pub model: Option<String>,
    /// Plan with the reference figures and `--profiles` only, not this machine's profiles:
    /// the shipped profile of this machine kind (e.g. profiles/cpu-2core.yaml on a 2-thread
    /// AMD EPYC; `JOULE_SHIPPED_PROFILES=0` leaves those out alone) and the files in
    /// `$JOULE_PROFILES_DIR`, default `$JOULE_HOME/profiles` (`joule profile` and `joule eval`
    /// output, and the calibration that runs keep up to date).
    #[arg(long)]
    pub no_machine_profiles: bool,
}

impl PlanningArgs {
    pub fn planning(&self) -> Planning {
        Planning {
            objective: self.objective.map(|o| match o {
                ObjectiveArg::Energy => Objective::Energy,
                ObjectiveArg::Cost => Objective::Cost,
                ObjectiveArg::Latency => Objective::Latency,
            }),
            slo: self.slo,
            profiles: self.profiles.clone(),
            catalog: self.catalog.clone(),
            policy: self.policy.clone(),
            devices: self.devices.clone(),
            time_limit: self.time_limit,
            model: self.model.clone(),
            no_machine_profiles: self.no_machine_profiles,
        }
    }
}

fn parse_slo(s: &str) -> Result<f64, String> {
    units::parse_duration(s).and_then(|v| {
        if v > 0.0 {
            Ok(v)
        } else {
            Err("the SLO must be more than zero".into())
        }
    })
}

/// `--endpoint NAME=URL`, repeatable: a catalog endpoint pointed at another URL.
#[derive(clap::Args, Clone, Default)]
pub struct EndpointArgs {
    /// Point a catalog endpoint at another URL, `NAME=URL` (e.g. a `joule serve` on loopback).
    #[arg(long = "endpoint", value_name = "NAME=URL")]
    pub endpoint: Vec<EndpointUrl>,
}

/// The run store a command reads, `--store` or the settings' default.
pub fn store_path(store: &Option<PathBuf>, settings: &Settings) -> PathBuf {
    store.clone().unwrap_or_else(|| settings.store_path())
}

/// A tokio runtime for the commands that do network or run work.
pub fn runtime() -> Result<tokio::runtime::Runtime, AppError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| AppError::failed(format!("cannot start the async runtime: {e}")))
}

/// A cancellation that Ctrl-C fires, saying `note` first (call inside the runtime). The one
/// place joule handles Ctrl-C: runs, evals, benchmarks and the server all stop through it.
pub fn cancel_on_ctrl_c(note: &'static str) -> Cancel {
    let cancel = Cancel::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        // SIGTERM too: it is how a service manager or a container runtime stops a process.
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        let stopped = tokio::select! {
            r = tokio::signal::ctrl_c() => r.is_ok(),
            _ = terminate => true,
        };
        if stopped {
            eprintln!("\n{note}");
            on_signal.cancel();
        }
    });
    cancel
}
