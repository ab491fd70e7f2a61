//! `joule serve`: the local models behind an OpenAI-compatible HTTP API (the `joule-serve`
//! library) and the run API beside it (the `joule-service` library), bound to an address
//! until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use joule_app::{AppError, Settings};
use joule_models::local::LocalBackend;

use super::{Outcome, cancel_on_ctrl_c, runtime};

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free one; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// `cpu` or `cuda:N`; the default is a GPU when joule was built with `cuda` and one is present.
    #[arg(long)]
    device: Option<String>,
    /// Memory for resident models, in GB of weights; least recently used models are unloaded
    /// beyond it.
    #[arg(long, default_value_t = 8.0)]
    memory_gb: f64,
    /// A catalog file instead of the built-in one.
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// A browser origin allowed to call the server (CORS), e.g. `http://localhost:3000`;
    /// repeat it for more, or give `*` for any. API keys come from `JOULE_API_KEYS`.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// The run store the run API (`/v1/workflows`, `/v1/runs`) keeps workflows, the queue,
    /// runs, API keys and tenants' spend in; the default is the one `joule run` uses.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Where submitted runs' tools work (their `path` arguments resolve inside it).
    #[arg(long, default_value = ".")]
    workspace: PathBuf,
    /// Runs in progress at once, across tenants; more wait in the queue.
    #[arg(long, default_value_t = 8)]
    max_runs: usize,
    /// The tenants file: each tenant's policy, share, queue and daily budgets (see the
    /// README's "Tenants"). Without it every key's tenant gets the defaults.
    #[arg(long)]
    tenants: Option<PathBuf>,
    /// Serve the run API without keys, every request as tenant `default`; only on a loopback
    /// address. Without it a request needs `Authorization: Bearer KEY` (`joule keys create`).
    #[arg(long)]
    no_auth: bool,
    /// Seconds a stopping server (SIGTERM, Ctrl-C) lets runs in progress go on before it stops
    /// them; stopped and queued runs go on at the next start.
    #[arg(long, default_value_t = 30.0)]
    drain_s: f64,
}

pub fn run(args: &Args, settings: &Settings) -> Outcome {
    let catalog = joule_app::assembly::catalog(args.catalog.as_deref())?;
    if !(args.memory_gb.is_finite() && args.memory_gb > 0.0) {
        return Err(AppError::invalid("--memory-gb must be positive"));
    }
    let backend = LocalBackend::new(
        Arc::new(catalog),
        settings.model_store(),
        args.device.as_deref(),
        (args.memory_gb * 1e9) as u64,
        settings.load_options(),
    )
    .map_err(|e| AppError::failed(e.to_string()))?;
    let access = joule_serve::Access {
        api_keys: settings.serve_api_keys(),
        cors_origins: args.cors_origins.clone(),
    };
    let mut router = joule_serve::router(backend.clone(), &access).map_err(AppError::invalid)?;
    if args.no_auth && !args.addr.ip().is_loopback() {
        return Err(AppError::invalid(format!(
            "--no-auth serves the run API to anyone who can reach {}; it is allowed only on a \
             loopback address (127.0.0.1 or ::1). Give keys instead: `joule keys create --tenant NAME`",
            args.addr
        )));
    }
    if !(args.drain_s.is_finite() && args.drain_s >= 0.0) {
        return Err(AppError::invalid("--drain-s must be 0 or more seconds"));
    }
    let tenants = match &args.tenants {
        Some(path) => joule_service::tenants::Tenants::load(path)
            .map_err(|e| AppError::invalid(format!("--tenants {e}")))?,
        None => joule_service::tenants::Tenants::open(),
    };
    let assembly = joule_app::Assembly::new(
        settings.clone(),
        joule_app::Planning {
            catalog: args.catalog.clone(),
            ..joule_app::Planning::default()
        },
        Vec::new(),
    )?;
    assembly.share_local(vec![backend.clone()])?;
    let service = joule_service::Service::new(
        Arc::new(assembly),
        joule_service::Config {
            store: super::store_path(&args.store, settings),
            workspace: args.workspace.clone(),
            max_runs: args.max_runs,
            auth: if args.no_auth {
                joule_service::Auth::None
            } else {
                joule_service::Auth::Keys
            },
            tenants,
            drain: std::time::Duration::from_secs_f64(args.drain_s),
        },
    )?;
    router = router.merge(joule_service::router(service.clone()));
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .map_err(|e| AppError::failed(format!("cannot listen on {}: {e}", args.addr)))?;
        let local = listener
            .local_addr()
            .map_err(|e| AppError::failed(e.to_string()))?;
        // Tests and scripts read this line to learn the port.
        println!(
            "joule serve: listening on http://{local}/v1 (device {}{})",
            backend.device_id(),
            if access.api_keys.is_empty() {
                ""
            } else {
                ", API key required"
            }
        );
        let stop =
            cancel_on_ctrl_c("joule serve: stopping (runs in progress get --drain-s to finish)");
        // stderr: tests and scripts read stdout's first line only, then close it.
        eprintln!(
            "joule serve: run API at http://{local}/v1/runs ({})",
            if args.no_auth {
                "no keys: tenant `default`"
            } else {
                "keys required"
            }
        );
        let worker = tokio::spawn(joule_service::worker::run(service, stop.clone()));
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .map_err(|e| AppError::failed(e.to_string()))?;
        // The worker drains: runs end or stop cleanly, so nothing is lost for the next start.
        let _ = worker.await;
        Ok(ExitCode::SUCCESS)
    })
}
