//! Who may use the service and how much: the operator's tenants file. Each tenant gets its
//! own operator policy (which providers, models, tools and sandbox layers its workflows may
//! touch), a share of the run slots, a bounded queue and daily budgets. A key (made with
//! `joule keys create`) names its tenant; without a tenants file every tenant has the
//! defaults and the server's policy.
//!
//! ```yaml
//! tenants:
//!   analytics:
//!     policy: policies/analytics.yaml   # relative to this file
//!     weight: 2                         # twice the run slots of a weight-1 tenant when both wait
//!     queue: 100                        # runs waiting at most; more are answered 429
//!     runs_in_flight: 4
//!     energy_per_day_j: 50000
//!     cost_per_day_usd: 2.0
//!     max_run_energy_j: 5000            # a run predicted to need more is refused
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One tenant's limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The tenant's operator policy file; `None`: the server's.
    pub policy: Option<PathBuf>,
    /// Its share of the run slots against other tenants that have runs waiting.
    pub weight: f64,
    /// Runs it may have waiting; a submission beyond gets 429.
    pub queue: usize,
    /// Runs it may have in progress at once; `None`: as many as the server runs.
    pub runs_in_flight: Option<usize>,
    pub energy_per_day_j: Option<f64>,
    pub cost_per_day_usd: Option<f64>,
    /// The most one run may be predicted to need.
    pub max_run_energy_j: Option<f64>,
    pub max_run_cost_usd: Option<f64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            policy: None,
            weight: 1.0,
            queue: 1000,
            runs_in_flight: None,
            energy_per_day_j: None,
            cost_per_day_usd: None,
            max_run_energy_j: None,
            max_run_cost_usd: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tenants: BTreeMap<String, Limits>,
}

/// The operator's tenants: named ones with their limits, or (no file) anyone with a key.
#[derive(Debug, Clone, Default)]
pub struct Tenants {
    /// `None`: no tenants file; every tenant gets [`Limits::default`].
    named: Option<BTreeMap<String, Limits>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TenantsError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: tenant `{tenant}`: {message}")]
    Invalid {
        path: String,
        tenant: String,
        message: String,
    },
}

impl Tenants {
    /// Anyone with a key, on the defaults.
    pub fn open() -> Self {
        Self::default()
    }

    /// Reads a tenants file; policy paths are taken relative to it.
    pub fn load(path: &Path) -> Result<Self, TenantsError> {
        let shown = path.display().to_string();
        let read = |message: String| TenantsError::Read {
            path: shown.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
        let file: File = serde_saphyr::from_str(&text).map_err(|e| read(e.to_string()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut named = BTreeMap::new();
        for (tenant, mut limits) in file.tenants {
            let invalid = |message: &str| TenantsError::Invalid {
                path: shown.clone(),
                tenant: tenant.clone(),
                message: message.to_string(),
            };
            if !(limits.weight.is_finite() && limits.weight > 0.0) {
                return Err(invalid("`weight` must be a positive number"));
            }
            if limits.runs_in_flight == Some(0) {
                return Err(invalid("`runs_in_flight` must be at least 1"));
            }
            let budgets = [
                limits.energy_per_day_j,
                limits.cost_per_day_usd,
                limits.max_run_energy_j,
                limits.max_run_cost_usd,
            ];
            if budgets
                .iter()
                .flatten()
                .any(|b| !(b.is_finite() && *b >= 0.0))
            {
                return Err(invalid("budgets must be numbers of at least 0"));
            }
            if let Some(p) = &limits.policy {
                limits.policy = Some(dir.join(p));
            }
            named.insert(tenant, limits);
        }
        Ok(Self { named: Some(named) })
    }

    /// A tenant's limits; `None` when a tenants file is in force and does not name it.
    pub fn limits(&self, tenant: &str) -> Option<Limits> {
        match &self.named {
            None => Some(Limits::default()),
            Some(named) => named.get(tenant).cloned(),
        }
    }

    /// The tenants with a policy of their own, to assemble their worlds at start.
    pub fn with_policies(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.named
            .iter()
            .flatten()
            .filter_map(|(t, l)| Some((t.as_str(), l.policy.as_deref()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_names_tenants_and_bad_limits_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.yaml");
        std::fs::write(
            &path,
            "tenants:\n  a:\n    weight: 2\n    policy: p.yaml\n    energy_per_day_j: 10\n  b: {}\n",
        )
        .unwrap();
        let t = Tenants::load(&path).unwrap();
        let a = t.limits("a").unwrap();
        assert_eq!((a.weight, a.energy_per_day_j), (2.0, Some(10.0)));
        assert_eq!(a.policy, Some(dir.path().join("p.yaml")));
        assert_eq!(t.limits("b").unwrap().queue, 1000);
        assert!(t.limits("c").is_none(), "a file names its tenants");
        assert!(Tenants::open().limits("c").is_some());

        std::fs::write(&path, "tenants:\n  a:\n    weight: 0\n").unwrap();
        let e = Tenants::load(&path).unwrap_err().to_string();
        assert!(e.contains("tenant `a`") && e.contains("weight"), "{e}");
        std::fs::write(&path, "tenants:\n  a:\n    weigth: 1\n").unwrap();
        assert!(Tenants::load(&path).is_err(), "unknown fields are refused");
    }
}
