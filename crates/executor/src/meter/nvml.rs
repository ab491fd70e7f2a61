//! NVML: the GPU's total energy counter (millijoules since the driver loaded, Volta and
//! newer). The NVML library is loaded at run time, so the default build needs no CUDA and a
//! machine without a GPU simply has no `nvml` meter.

use std::sync::Arc;
use std::time::Instant;

use nvml_wrapper::Nvml as Library;

use super::{Meter, MeterError, Method, Sample};

pub struct Nvml {
    library: Arc<Library>,
    ordinal: u32,
}

impl Nvml {
    pub fn open(ordinal: u32) -> Result<Self, MeterError> {
        let library =
            Library::init().map_err(|e| MeterError::Unavailable("nvml", e.to_string()))?;
        let meter = Self {
            library: Arc::new(library),
            ordinal,
        };
        meter.read()?;
        Ok(meter)
    }

    fn read(&self) -> Result<u64, MeterError> {
        let what = || format!("cuda:{} energy counter", self.ordinal);
        let device = self
            .library
            .device_by_index(self.ordinal)
            .map_err(|e| MeterError::Read {
                what: what(),
                message: e.to_string(),
            })?;
        device
            .total_energy_consumption()
            .map_err(|e| MeterError::Read {
                what: what(),
                message: e.to_string(),
            })
    }
}

impl Meter for Nvml {
    fn method(&self) -> Method {
        Method::Nvml
    }

    fn sample(&self) -> Result<Sample, MeterError> {
        Ok(Sample {
            at: Instant::now(),
            counters: vec![self.read()?],
        })
    }

    fn joules(&self, a: &Sample, b: &Sample) -> f64 {
        b.counters[0].saturating_sub(a.counters[0]) as f64 / 1e3
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_a_gpu_nvml_is_unavailable_not_a_crash() {
        // On a machine with an NVIDIA driver this opens; elsewhere it must say why it cannot.
        match super::Nvml::open(0) {
            Ok(m) => {
                use super::Meter;
                let a = m.sample().unwrap();
                let b = m.sample().unwrap();
                assert!(m.joules(&a, &b) >= 0.0);
            }
            Err(e) => assert!(e.to_string().contains("nvml"), "{e}"),
        }
    }
}
