//! The `estimate` meter: profiled active power times measured time. For the CPU the time is
//! the process's CPU time spread over the machine's cores, so a step that keeps one of two
//! cores busy is charged half the package's active power. It is labelled `estimate`, always.

use std::time::Instant;

use super::{Meter, MeterError, Method, Sample};

/// CPU time consumed by this process so far, in microseconds (user + system).
pub struct CpuTime;

impl CpuTime {
    pub fn micros() -> Result<u64, MeterError> {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
        // SAFETY: getrusage writes a full `rusage` into the pointer on success.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
        if rc != 0 {
            return Err(MeterError::Read {
                what: "getrusage".into(),
                message: std::io::Error::last_os_error().to_string(),
            });
        }
        // SAFETY: rc == 0, so the kernel filled it in.
        let usage = unsafe { usage.assume_init() };
        let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        Ok(micros(usage.ru_utime) + micros(usage.ru_stime))
    }
}

pub struct Estimate {
    active_w: f64,
    /// `Some(cores)`: scale by CPU time over this many cores; `None`: charge wall time.
    cpu_cores: Option<f64>,
}

impl Estimate {
    /// A device busy for the whole measured interval (a GPU without NVML, an endpoint).
    pub fn wall(active_w: f64) -> Self {
        Self {
            active_w,
            cpu_cores: None,
        }
    }

    /// This machine's CPU, charged by the process's CPU time.
    pub fn cpu(active_w: f64) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Self {
            active_w,
            cpu_cores: Some(cores as f64),
        }
    }
}

impl Meter for Estimate {
    fn method(&self) -> Method {
        Method::Estimate
    }

    fn sample(&self) -> Result<Sample, MeterError> {
        let counters = match self.cpu_cores {
            Some(_) => vec![CpuTime::micros()?],
            None => Vec::new(),
        };
        Ok(Sample {
            at: Instant::now(),
            counters,
        })
    }

    fn joules(&self, a: &Sample, b: &Sample) -> f64 {
        match self.cpu_cores {
            Some(cores) => {
                let cpu_s = b.counters[0].saturating_sub(a.counters[0]) as f64 / 1e6;
                self.active_w * cpu_s / cores
            }
            None => self.active_w * b.at.duration_since(a.at).as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_estimates_follow_cpu_time_not_wall_time() {
        let meter = Estimate::cpu(20.0);
        let a = meter.sample().unwrap();
        // Work on this thread: CPU time advances.
        let mut x = 0u64;
        for i in 0..30_000_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = meter.sample().unwrap();
        let e = meter.energy(&a, &b);
        assert_eq!(e.method, Method::Estimate);
        let cpu_s = (b.counters[0] - a.counters[0]) as f64 / 1e6;
        assert!(cpu_s > 0.0);
        let cores = std::thread::available_parallelism().unwrap().get() as f64;
        assert!((e.joules - 20.0 * cpu_s / cores).abs() < 1e-9);
    }

    #[test]
    fn wall_estimates_charge_elapsed_time() {
        let meter = Estimate::wall(100.0);
        let a = meter.sample().unwrap();
        let b = Sample {
            at: a.at + std::time::Duration::from_millis(1500),
            counters: Vec::new(),
        };
        assert!((meter.joules(&a, &b) - 150.0).abs() < 1e-9);
    }
}
