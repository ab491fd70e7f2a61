//! Energy meters: what a step really cost in joules, and how that was found out.
//!
//! A meter reads a cumulative counter; a step's energy is the difference between two samples.
//! `nvml` reads the GPU's own energy counter and `rapl` the CPU package counters the kernel
//! exposes in `/sys/class/powercap`; both are measurements. Where neither exists the `estimate`
//! meter multiplies profiled power by measured time (for the CPU, by the process's CPU time),
//! and says so: every figure carries its [`Method`].

mod estimate;
mod nvml;
mod rapl;

use std::time::Instant;

pub use estimate::{CpuTime, Estimate};
pub use joule_planner::figure::Meter as Method;
pub use nvml::Nvml;
pub use rapl::{POWERCAP, Rapl};

#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error("{0} is not available here: {1}")]
    Unavailable(&'static str, String),
    #[error("reading {what}: {message}")]
    Read { what: String, message: String },
}

/// One reading of a meter's counters.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub counters: Vec<u64>,
}

/// Energy and how it was obtained.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Energy {
    pub joules: f64,
    pub method: Method,
}

pub trait Meter: Send + Sync {
    fn method(&self) -> Method;
    fn sample(&self) -> Result<Sample, MeterError>;
    /// Joules used between two samples, `a` taken first.
    fn joules(&self, a: &Sample, b: &Sample) -> f64;

    fn energy(&self, a: &Sample, b: &Sample) -> Energy {
        Energy {
            joules: self.joules(a, b),
            method: self.method(),
        }
    }
}

/// The best meter for a device: a GPU's NVML counter or the CPU's RAPL counters when present,
/// otherwise an estimate from the profiled active power.
pub fn for_device(device: &str, active_w: f64) -> Box<dyn Meter> {
    if let Some(ordinal) = device
        .strip_prefix("cuda:")
        .and_then(|n| n.parse::<u32>().ok())
    {
        match Nvml::open(ordinal) {
            Ok(m) => return Box::new(m),
            Err(e) => once(
                device,
                || tracing::info!(device, error = %e, "no NVML; energy will be estimated"),
            ),
        }
        return Box::new(Estimate::wall(active_w));
    }
    if device == "cpu" {
        match Rapl::open(rapl::POWERCAP) {
            Ok(m) => return Box::new(m),
            Err(e) => once(
                device,
                || tracing::info!(device, error = %e, "no RAPL; energy will be estimated"),
            ),
        }
        return Box::new(Estimate::cpu(active_w));
    }
    Box::new(Estimate::wall(active_w))
}

/// Says something about a device once per process: a server or benchmark opens a meter per
/// run, and the same "no counter here" line every run is noise.
fn once(device: &str, say: impl FnOnce()) {
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if !said.iter().any(|d| d == device) {
        said.push(device.to_string());
        say();
    }
}

/// Splits a device's energy between steps that ran on it, possibly overlapping.
///
/// `samples` are (seconds, cumulative joules) readings of the device's meter, in time order;
/// `busy` is each step's (start, end) in the same seconds. The energy of each stretch between
/// two samples goes to the steps busy in it, in proportion to how much of the stretch each
/// was busy; energy while no step ran is idle and goes to nobody.
pub fn apportion(samples: &[(f64, f64)], busy: &[(f64, f64)]) -> Vec<f64> {
    let mut shares = vec![0.0; busy.len()];
    for pair in samples.windows(2) {
        let ((t0, e0), (t1, e1)) = (pair[0], pair[1]);
        let span = t1 - t0;
        if span <= 0.0 {
            continue;
        }
        let overlaps: Vec<f64> = busy
            .iter()
            .map(|&(s, e)| (e.min(t1) - s.max(t0)).max(0.0))
            .collect();
        let total: f64 = overlaps.iter().sum();
        if total <= 0.0 {
            continue;
        }
        // The stretch's energy, scaled by how much of it had any step running (the union,
        // bounded by the span), then shared by busy time.
        let covered = union_length(busy, t0, t1) / span;
        let energy = (e1 - e0) * covered;
        for (share, overlap) in shares.iter_mut().zip(&overlaps) {
            *share += energy * overlap / total;
        }
    }
    shares
}

fn union_length(busy: &[(f64, f64)], t0: f64, t1: f64) -> f64 {
    let mut clipped: Vec<(f64, f64)> = busy
        .iter()
        .map(|&(s, e)| (s.max(t0), e.min(t1)))
        .filter(|(s, e)| e > s)
        .collect();
    clipped.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut length = 0.0;
    let mut end = f64::NEG_INFINITY;
    for (s, e) in clipped {
        if e > end {
            length += e - s.max(end);
            end = e;
        }
    }
    length
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_lone_step_gets_its_window_and_idle_time_goes_to_nobody() {
        let samples = [(0.0, 0.0), (1.0, 10.0), (2.0, 30.0), (3.0, 35.0)];
        assert_eq!(apportion(&samples, &[(1.0, 2.0)]), [20.0]);
        // Two steps sharing the middle second equally.
        assert_eq!(apportion(&samples, &[(1.0, 2.0), (1.0, 2.0)]), [10.0, 10.0]);
        // Busy for half of the first second only: half its energy.
        assert_eq!(apportion(&samples, &[(0.5, 1.0)]), [5.0]);
    }

    proptest! {
        #[test]
        fn shares_never_exceed_the_device_energy(
            steps in proptest::collection::vec((0.0f64..10.0, 0.0f64..5.0), 1..6),
            deltas in proptest::collection::vec(0.0f64..100.0, 1..12),
        ) {
            let mut samples = vec![(0.0, 0.0)];
            for (i, d) in deltas.iter().enumerate() {
                let (_, e) = samples[i];
                samples.push(((i + 1) as f64, e + d));
            }
            let busy: Vec<(f64, f64)> = steps.iter().map(|&(s, l)| (s, s + l)).collect();
            let shares = apportion(&samples, &busy);
            let total = samples.last().unwrap().1;
            let sum: f64 = shares.iter().sum();
            prop_assert!(shares.iter().all(|s| *s >= 0.0));
            prop_assert!(sum <= total + 1e-9);
            // When some step is busy all the time, all the energy is attributed.
            if busy.iter().any(|&(s, e)| s <= 0.0 && e >= deltas.len() as f64) {
                prop_assert!((sum - total).abs() < 1e-6);
            }
        }
    }
}
