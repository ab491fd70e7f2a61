//! Metering during a run: one meter per device, sampled whenever a step starts or ends on it,
//! and each step's share of the device's energy worked out from who was busy when
//! ([`crate::meter::apportion`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::meter::{self, Energy, Meter, Sample};

struct Device {
    meter: Box<dyn Meter>,
    first: Sample,
    /// (seconds since the run started, joules since `first`).
    samples: Vec<(f64, f64)>,
    /// Busy intervals; an open one ends "now".
    busy: Vec<(f64, Option<f64>)>,
}

/// A step's claim on a device, from [`Meters::begin`] to [`Meters::end`].
pub struct Busy {
    device: String,
    slot: usize,
}

pub struct Meters {
    t0: Instant,
    devices: Mutex<HashMap<String, Device>>,
    /// Active power (W) the estimate meter of each device assumes.
    active_w: Box<dyn Fn(&str) -> f64 + Send + Sync>,
}

impl Meters {
    pub fn new(t0: Instant, active_w: Box<dyn Fn(&str) -> f64 + Send + Sync>) -> Self {
        Self {
            t0,
            devices: Mutex::new(HashMap::new()),
            active_w,
        }
    }

    /// Seconds since the run started, on the clock the meters use.
    pub fn elapsed(&self) -> f64 {
        self.now()
    }

    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// Marks `device` busy from now, sampling its meter.
    pub fn begin(&self, device: &str) -> Busy {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let d = devices.entry(device.to_string()).or_insert_with(|| {
            let meter = meter::for_device(device, (self.active_w)(device));
            let first = meter.sample().unwrap_or_else(|_| Sample {
                at: Instant::now(),
                counters: Vec::new(),
            });
            Device {
                meter,
                first,
                samples: Vec::new(),
                busy: Vec::new(),
            }
        });
        let t = self.now();
        sample(d, t);
        d.busy.push((t, None));
        Busy {
            device: device.to_string(),
            slot: d.busy.len() - 1,
        }
    }

    /// Ends a busy interval and returns its share of the device's energy since it began.
    pub fn end(&self, busy: Busy) -> Energy {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let d = devices
            .get_mut(&busy.device)
            .expect("a Busy comes from begin() on the same meters");
        let t = self.now();
        sample(d, t);
        let start = d.busy[busy.slot].0;
        d.busy[busy.slot].1 = Some(t);
        let samples: Vec<(f64, f64)> = d
            .samples
            .iter()
            .copied()
            .filter(|&(at, _)| at >= start)
            .collect();
        let overlapping: Vec<(usize, (f64, f64))> = d
            .busy
            .iter()
            .enumerate()
            .filter(|(_, (s, e))| *s <= t && e.is_none_or(|e| e >= start))
            .map(|(i, (s, e))| (i, (*s, e.unwrap_or(t))))
            .collect();
        let intervals: Vec<(f64, f64)> = overlapping.iter().map(|(_, iv)| *iv).collect();
        let shares = meter::apportion(&samples, &intervals);
        let mine = overlapping
            .iter()
            .position(|(i, _)| *i == busy.slot)
            .map_or(0.0, |k| shares[k]);
        Energy {
            joules: mine,
            method: d.meter.method(),
        }
    }
}

fn sample(d: &mut Device, t: f64) {
    let joules = d
        .meter
        .sample()
        .map(|s| d.meter.joules(&d.first, &s))
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "meter read failed; reusing the last reading");
            d.samples.last().map_or(0.0, |l| l.1)
        });
    d.samples.push((t, joules));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::Method;

    /// Two steps overlapping on one (estimated, 100 W) device: together they are charged the
    /// device's energy over the whole span, each its own stretch plus half the shared one.
    #[test]
    fn overlapping_steps_share_the_device_energy() {
        let t0 = Instant::now();
        let meters = Meters::new(t0, Box::new(|_| 100.0));
        let spin = |d: std::time::Duration| {
            let s = Instant::now();
            while s.elapsed() < d {}
        };
        let ms = std::time::Duration::from_millis(30);
        let a = meters.begin("remote");
        let start = meters.elapsed();
        spin(ms);
        let b = meters.begin("remote");
        spin(ms);
        let ea = meters.end(a);
        spin(ms);
        let eb = meters.end(b);
        let span = meters.elapsed() - start;
        assert_eq!(ea.method, Method::Estimate);
        let total = ea.joules + eb.joules;
        assert!(
            (total - 100.0 * span).abs() < 0.05 * 100.0 * span,
            "{total} vs {}",
            100.0 * span
        );
        // Each had about 30 ms alone and 30 ms shared: neither got the shared stretch twice.
        for e in [ea.joules, eb.joules] {
            assert!(e > 0.3 * total && e < 0.7 * total, "{e} of {total}");
        }
    }
}
