//! What this machine offers the planner: its CPU, its NVIDIA GPUs (through NVML, loaded at
//! run time), whether RAPL energy counters are readable, and whether the catalog's endpoints
//! answer. `joule devices` prints it; the planner's `--devices` takes these names.

use std::time::Duration;

use joule_planner::catalog::Catalog;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    pub model: String,
    /// Threads this process may use.
    pub threads: usize,
    /// Whether `/sys/class/powercap` RAPL counters can be read (else CPU energy is estimated).
    pub rapl: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Gpu {
    /// The device name joule uses (`cuda:N`).
    pub id: String,
    pub name: String,
    pub memory_gb: f64,
    pub power_limit_w: Option<f64>,
    /// Whether the total-energy counter (the `nvml` meter) works.
    pub energy_counter: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointState {
    pub name: String,
    pub base_url: String,
    /// Whether `GET {base_url}/models` answered within the timeout (any HTTP status counts).
    pub answers: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Devices {
    pub cpu: Cpu,
    pub gpus: Vec<Gpu>,
    /// Why no GPU is listed, when none is.
    pub gpu_note: Option<String>,
    pub endpoints: Vec<EndpointState>,
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn gpus() -> (Vec<Gpu>, Option<String>) {
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(e) => return (Vec::new(), Some(format!("NVML is not available: {e}"))),
    };
    let count = match nvml.device_count() {
        Ok(c) => c,
        Err(e) => return (Vec::new(), Some(format!("NVML cannot count devices: {e}"))),
    };
    let mut out = Vec::new();
    for i in 0..count {
        let Ok(d) = nvml.device_by_index(i) else {
            continue;
        };
        out.push(Gpu {
            id: format!("cuda:{i}"),
            name: d.name().unwrap_or_else(|_| "unknown".into()),
            memory_gb: d.memory_info().map_or(0.0, |m| m.total as f64 / 1e9),
            power_limit_w: d.enforced_power_limit().ok().map(|mw| f64::from(mw) / 1e3),
            energy_counter: d.total_energy_consumption().is_ok(),
        });
    }
    let note = out.is_empty().then(|| "NVML found no GPU".to_string());
    (out, note)
}

async fn probe(name: &str, base_url: &str, timeout: Duration) -> EndpointState {
    let url = format!("{}/models", base_url.trim_end_matches('/'));
    let client = reqwest::Client::builder().timeout(timeout).build();
    let (answers, detail) = match client {
        Ok(c) => match c.get(&url).send().await {
            Ok(r) => (true, format!("HTTP {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => (
                false,
                format!("no answer within {:.0} s", timeout.as_secs_f64()),
            ),
            Err(e) => (false, chain(&e)),
        },
        Err(e) => (false, e.to_string()),
    };
    EndpointState {
        name: name.to_string(),
        base_url: base_url.to_string(),
        answers,
        detail,
    }
}

/// An error with its causes (`connection refused` hides two levels down in reqwest's).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Detects everything, probing the catalog's endpoints concurrently.
/// This machine's CPU: what shipped machine profiles are matched against.
pub fn cpu() -> Cpu {
    Cpu {
        model: cpu_model(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        rapl: crate::meter::Rapl::open(crate::meter::POWERCAP).is_ok(),
    }
}

pub async fn detect(catalog: &Catalog, timeout: Duration) -> Devices {
    let (gpus, gpu_note) = gpus();
    let mut probes = tokio::task::JoinSet::new();
    for (i, e) in catalog.endpoints.iter().enumerate() {
        let (name, url) = (e.name.clone(), e.base_url.clone());
        probes.spawn(async move { (i, probe(&name, &url, timeout).await) });
    }
    let mut endpoints: Vec<(usize, EndpointState)> = Vec::new();
    while let Some(Ok(p)) = probes.join_next().await {
        endpoints.push(p);
    }
    endpoints.sort_by_key(|(i, _)| *i);
    Devices {
        cpu: cpu(),
        gpus,
        gpu_note,
        endpoints: endpoints.into_iter().map(|(_, e)| e).collect(),
    }
}
