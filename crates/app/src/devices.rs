//! What this machine offers, for `joule devices` and for planning: the hardware (CPU, NVIDIA
//! GPUs through NVML, RAPL counters) and whether the catalog's endpoints answer.

use std::time::Duration;

use joule_executor::devices::{Cpu, Gpu};
use joule_models::openai::probe::{EndpointState, probe_all};
use joule_planner::catalog::Catalog;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Devices {
    pub cpu: Cpu,
    pub gpus: Vec<Gpu>,
    /// Why no GPU is listed, when none is.
    pub gpu_note: Option<String>,
    /// Whether this joule can run models on the GPUs listed (it was built with `cuda`).
    pub gpu_inference: bool,
    pub endpoints: Vec<EndpointState>,
}

/// Detects everything, probing the catalog's endpoints concurrently.
pub async fn detect(catalog: &Catalog, timeout: Duration) -> Devices {
    let (gpus, gpu_note) = joule_executor::devices::gpus();
    let endpoints: Vec<(String, String)> = catalog
        .endpoints
        .iter()
        .map(|e| (e.name.clone(), e.base_url.clone()))
        .collect();
    Devices {
        cpu: joule_executor::devices::cpu(),
        gpus,
        gpu_note,
        gpu_inference: cfg!(feature = "cuda"),
        endpoints: probe_all(&endpoints, timeout).await,
    }
}

/// The local devices a plan may use by default: the CPU, and the GPUs NVML sees when this
/// joule can run models on them (built with the `cuda` feature); a GPU this binary cannot use
/// is not planned onto.
pub fn local_devices() -> Vec<String> {
    let mut devices = vec!["cpu".to_string()];
    if cfg!(feature = "cuda") {
        devices.extend(joule_executor::devices::gpus().0.into_iter().map(|g| g.id));
    }
    devices
}
