//! What a run was asked to do, as plain data. The run store keeps [`RunOptions`] with every
//! run so that `joule resume` and `joule replay` rebuild it the same way, so these types are
//! records: they round-trip through JSON, and their field names are the ones joule 0.1 wrote
//! (its records came from the command-line parser's struct, which is why a flag's rename once
//! could have broken resuming old runs: the parser now converts into these instead).

use std::path::PathBuf;

use joule_planner::plan::Request;
use joule_planner::solve::{Options, Strategy};
use joule_planner::spec::Objective;
use serde::{Deserialize, Serialize};

/// Everything planning depends on besides the workflow and the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Planning {
    /// What to minimise (default: the workflow's `objective`).
    #[serde(default)]
    pub objective: Option<Objective>,
    /// Replaces the workflow's latency SLO, seconds.
    #[serde(default)]
    pub slo: Option<f64>,
    /// Extra profile files, merged last.
    #[serde(default)]
    pub profiles: Vec<PathBuf>,
    /// A catalog file instead of the built-in one.
    #[serde(default)]
    pub catalog: Option<PathBuf>,
    /// The operator policy file (default: the settings').
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// Local devices to plan for (default: what this machine has).
    #[serde(default)]
    pub devices: Option<Vec<String>>,
    /// The solver's time limit, seconds.
    #[serde(default = "default_time_limit")]
    pub time_limit: f64,
    /// Every llm step on this model, quality floors set aside.
    #[serde(default)]
    pub model: Option<String>,
    /// Plan from the reference figures and `profiles` only.
    #[serde(default)]
    pub no_machine_profiles: bool,
}

fn default_time_limit() -> f64 {
    Options::default().time_limit_s
}

impl Default for Planning {
    fn default() -> Self {
        Self {
            objective: None,
            slo: None,
            profiles: Vec::new(),
            catalog: None,
            policy: None,
            devices: None,
            time_limit: default_time_limit(),
            model: None,
            no_machine_profiles: false,
        }
    }
}

impl Planning {
    /// The planner's request under these choices.
    pub fn request(&self, strategy: Strategy) -> Request {
        Request {
            objective: self.objective,
            slo_s: self.slo,
            strategy,
            options: Options {
                time_limit_s: self.time_limit,
            },
        }
    }
}

/// A catalog endpoint pointed at another URL (`--endpoint NAME=URL`), stored as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EndpointUrl {
    pub name: String,
    pub url: String,
}

impl std::str::FromStr for EndpointUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((name, url)) if !name.trim().is_empty() && !url.trim().is_empty() => Ok(Self {
                name: name.trim().to_string(),
                url: url.trim().to_string(),
            }),
            _ => Err(format!("`{s}`: expected NAME=URL")),
        }
    }
}

impl TryFrom<String> for EndpointUrl {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<EndpointUrl> for String {
    fn from(e: EndpointUrl) -> Self {
        format!("{}={}", e.name, e.url)
    }
}

/// What a stored run needs to be planned and run again the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    pub planning: Planning,
    #[serde(default)]
    pub endpoints: Vec<EndpointUrl>,
    /// Where the workflow's `path` arguments are resolved: its directory.
    pub workspace: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_options_read_back_field_for_field() {
        let options = RunOptions {
            planning: Planning {
                objective: Some(Objective::Cost),
                slo: Some(45.0),
                profiles: vec!["a.yaml".into()],
                catalog: Some("c.yaml".into()),
                policy: Some("p.yaml".into()),
                devices: Some(vec!["cpu".into(), "cuda:0".into()]),
                time_limit: 2.5,
                model: Some("smollm2-135m".into()),
                no_machine_profiles: true,
            },
            endpoints: vec!["lan=http://127.0.0.1:9/v1".parse().unwrap()],
            workspace: "/w".into(),
        };
        let text = serde_json::to_string(&options).unwrap();
        assert_eq!(serde_json::from_str::<RunOptions>(&text).unwrap(), options);
    }

    #[test]
    fn options_joule_0_1_stored_still_read() {
        // Exactly what joule 0.1 wrote into `runs.options` (from its command-line struct).
        let old = r#"{"planning":{"objective":null,"slo":null,"profiles":[],"catalog":null,"policy":null,"devices":null,"time_limit":10.0,"model":"smollm2-135m","no_machine_profiles":false},"endpoints":["lan-joule=http://127.0.0.1:8080/v1"],"workspace":"/tmp/fx"}"#;
        let o: RunOptions = serde_json::from_str(old).unwrap();
        assert_eq!(o.planning.model.as_deref(), Some("smollm2-135m"));
        assert_eq!(o.planning.time_limit, 10.0);
        assert_eq!(o.endpoints[0].name, "lan-joule");
        assert_eq!(o.endpoints[0].url, "http://127.0.0.1:8080/v1");
        // Before `policy` and `model` existed.
        let older = r#"{"planning":{"objective":"energy","slo":30.0,"profiles":[],"catalog":null,"devices":["cpu"],"time_limit":10.0},"endpoints":[],"workspace":"/w"}"#;
        let o: RunOptions = serde_json::from_str(older).unwrap();
        assert_eq!(o.planning.objective, Some(Objective::Energy));
        assert!(o.planning.model.is_none() && !o.planning.no_machine_profiles);
    }

    #[test]
    fn a_bad_endpoint_override_says_what_is_expected() {
        assert!(
            "lan"
                .parse::<EndpointUrl>()
                .unwrap_err()
                .contains("NAME=URL")
        );
        assert!("=http://x".parse::<EndpointUrl>().is_err());
    }
}
