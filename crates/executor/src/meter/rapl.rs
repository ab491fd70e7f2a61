//! RAPL package energy through Linux powercap: `<root>/intel-rapl:N/energy_uj` counters (AMD
//! exposes the same interface), summed over CPU packages, with their wrap-around handled.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{Meter, MeterError, Method, Sample};

pub const POWERCAP: &str = "/sys/class/powercap";

struct Domain {
    energy: PathBuf,
    /// The counter wraps to 0 after this many microjoules.
    range_uj: u64,
}

pub struct Rapl {
    domains: Vec<Domain>,
}

fn read_u64(path: &Path) -> Result<u64, MeterError> {
    let text = fs::read_to_string(path).map_err(|e| MeterError::Read {
        what: path.display().to_string(),
        message: e.to_string(),
    })?;
    text.trim().parse().map_err(|e| MeterError::Read {
        what: path.display().to_string(),
        message: format!("`{}` is not a counter: {e}", text.trim()),
    })
}

impl Rapl {
    /// The package domains under `root` (top-level `intel-rapl:N` zones named `package-*`);
    /// unavailable when there are none or they are not readable (often root-only).
    pub fn open(root: impl AsRef<Path>) -> Result<Self, MeterError> {
        let root = root.as_ref();
        let entries = fs::read_dir(root)
            .map_err(|e| MeterError::Unavailable("rapl", format!("{}: {e}", root.display())))?;
        let mut zones: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("intel-rapl:") && n.matches(':').count() == 1)
            })
            .collect();
        zones.sort();
        let mut domains = Vec::new();
        for zone in zones {
            let name = fs::read_to_string(zone.join("name")).unwrap_or_default();
            if !name.trim().starts_with("package") {
                continue;
            }
            let energy = zone.join("energy_uj");
            read_u64(&energy)?;
            let range_uj = read_u64(&zone.join("max_energy_range_uj"))?;
            domains.push(Domain { energy, range_uj });
        }
        if domains.is_empty() {
            return Err(MeterError::Unavailable(
                "rapl",
                format!("no package zones in {}", root.display()),
            ));
        }
        Ok(Self { domains })
    }
}

impl Meter for Rapl {
    fn method(&self) -> Method {
        Method::Rapl
    }

    fn sample(&self) -> Result<Sample, MeterError> {
        let counters = self
            .domains
            .iter()
            .map(|d| read_u64(&d.energy))
            .collect::<Result<_, _>>()?;
        Ok(Sample {
            at: Instant::now(),
            counters,
        })
    }

    fn joules(&self, a: &Sample, b: &Sample) -> f64 {
        let micro: u64 = self
            .domains
            .iter()
            .zip(a.counters.iter().zip(&b.counters))
            .map(|(d, (&x, &y))| if y >= x { y - x } else { d.range_uj - x + y })
            .sum();
        micro as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A powercap tree laid out as the kernel lays it out (this machine has none; the files
    /// stand in for the kernel's, and are named as such).
    fn fake_powercap(packages: &[(u64, u64)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (i, (energy, range)) in packages.iter().enumerate() {
            let zone = dir.path().join(format!("intel-rapl:{i}"));
            fs::create_dir_all(zone.join(format!("intel-rapl:{i}:0"))).unwrap();
            fs::write(zone.join("name"), format!("package-{i}\n")).unwrap();
            fs::write(zone.join("energy_uj"), format!("{energy}\n")).unwrap();
            fs::write(zone.join("max_energy_range_uj"), format!("{range}\n")).unwrap();
        }
        let psys = dir.path().join("intel-rapl:9");
        fs::create_dir_all(&psys).unwrap();
        fs::write(psys.join("name"), "psys\n").unwrap();
        dir
    }

    #[test]
    fn counters_are_summed_over_packages_across_a_wrap() {
        let dir = fake_powercap(&[(1_000_000, 10_000_000), (9_500_000, 10_000_000)]);
        let rapl = Rapl::open(dir.path()).unwrap();
        let a = rapl.sample().unwrap();
        fs::write(dir.path().join("intel-rapl:0/energy_uj"), "3000000").unwrap();
        // Package 1 wrapped: 9.5 J -> 10 J (range) -> 0.5 J.
        fs::write(dir.path().join("intel-rapl:1/energy_uj"), "500000").unwrap();
        let b = rapl.sample().unwrap();
        let e = rapl.energy(&a, &b);
        assert_eq!(e.method, Method::Rapl);
        assert!((e.joules - 3.0).abs() < 1e-9, "{}", e.joules);
    }

    #[test]
    fn no_powercap_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Rapl::open(dir.path().join("none")),
            Err(MeterError::Unavailable(..))
        ));
        assert!(matches!(
            Rapl::open(dir.path()),
            Err(MeterError::Unavailable(..))
        ));
    }
}
