//! `joule devices`: what joule detects here (CPU, NVIDIA GPUs, RAPL, endpoints).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use joule_app::AppError;

use super::{Outcome, runtime};

#[derive(clap::Args)]
pub struct Args {
    /// A catalog file instead of the built-in one (its endpoints are probed).
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Seconds to wait for each endpoint.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> Outcome {
    let catalog = joule_app::assembly::catalog(args.catalog.as_deref())?;
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(AppError::invalid(
            "--timeout must be a positive number of seconds",
        ));
    }
    let timeout = Duration::from_secs_f64(args.timeout.clamp(0.1, 60.0));
    let d = runtime()?.block_on(joule_app::devices::detect(&catalog, timeout));
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&d).map_err(|e| AppError::failed(e.to_string()))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "cpu      {} ({} threads); energy: {}",
        d.cpu.model,
        d.cpu.threads,
        if d.cpu.rapl {
            "rapl"
        } else {
            "estimate (no readable RAPL counters)"
        }
    );
    for g in &d.gpus {
        println!(
            "{:<8} {} ({:.0} GB{}); energy: {}",
            g.id,
            g.name,
            g.memory_gb,
            g.power_limit_w
                .map(|w| format!(", power limit {w:.0} W"))
                .unwrap_or_default(),
            if g.energy_counter {
                "nvml"
            } else {
                "estimate (no energy counter)"
            }
        );
    }
    if let Some(note) = &d.gpu_note {
        println!("gpu      none: {note}");
    } else if !d.gpu_inference {
        println!(
            "gpu      not planned onto: this joule was built without the `cuda` feature (`make cuda`)"
        );
    }
    for e in &d.endpoints {
        println!(
            "endpoint {} {} : {} ({})",
            e.name,
            e.base_url,
            if e.answers { "answers" } else { "no answer" },
            e.detail
        );
    }
    Ok(ExitCode::SUCCESS)
}
