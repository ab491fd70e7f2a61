//! What this machine's hardware offers the planner: its CPU, its NVIDIA GPUs (through NVML,
//! loaded at run time) and whether RAPL energy counters are readable, which decides how each
//! device's energy is metered. `joule devices` prints it; the planner's `--devices` takes
//! these names.

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

/// The NVIDIA GPUs NVML sees, or why none is listed.
pub fn gpus() -> (Vec<Gpu>, Option<String>) {
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

/// This machine's CPU: what shipped machine profiles are matched against.
pub fn cpu() -> Cpu {
    Cpu {
        model: cpu_model(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        rapl: crate::meter::Rapl::open(crate::meter::POWERCAP).is_ok(),
    }
}
