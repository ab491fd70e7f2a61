//! Profiles: what joule knows about how fast, how power-hungry and how good each model is on
//! each device. Several files merge (the shipped reference figures, this machine's measured
//! profile, an operator's overrides); for each figure the strongest source wins, so a
//! measurement always beats a published figure, which beats an estimate.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::diag::{SourceFile, SpecError};
use crate::figure::{Figure, Meter, Source};
use crate::spec::Task;

/// The reference profile shipped with joule.
pub const REFERENCE: &str = include_str!("../../../profiles/reference.yaml");

/// Measured profiles of machine kinds, shipped with joule and applied by default on a
/// machine that matches their `machine:` (see [`Machine::matches`]).
pub const SHIPPED: [(&str, &str); 1] = [(
    "profiles/cpu-2core.yaml",
    include_str!("../../../profiles/cpu-2core.yaml"),
)];

/// One profile file as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    pub name: String,
    /// The machine the figures were measured on, for a profile meant to travel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    #[serde(default)]
    pub hardware: Vec<Hardware>,
    #[serde(default)]
    pub quality: Vec<Quality>,
    #[serde(default)]
    pub tools: Vec<Tool>,
    /// Token counts of workflow steps, learned from runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepTokens>,
    /// Quality of workflow steps on models, measured on the workflow's own examples.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_quality: Vec<StepQuality>,
}

impl ProfileFile {
    /// The file as YAML, in the format [`Profiles::parse`] reads.
    pub fn to_yaml(&self) -> Result<String, String> {
        serde_saphyr::to_string(self).map_err(|e| e.to_string())
    }
}

/// What identifies a machine kind: figures measured on one CPU model with a given number of
/// threads hold, to within run-to-run noise, on another machine of the same kind.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// The CPU's model name, as `/proc/cpuinfo` gives it.
    pub cpu: String,
    /// Threads joule may use there.
    pub threads: usize,
}

impl Machine {
    /// Same CPU model (ignoring case and spacing) and the same number of threads: fewer or
    /// more threads change every CPU speed.
    pub fn matches(&self, cpu: &str, threads: usize) -> bool {
        let norm = |s: &str| {
            s.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase()
        };
        norm(&self.cpu) == norm(cpu) && self.threads == threads
    }
}

/// Figures of one model on one device (a local device or an endpoint).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    pub model: String,
    pub device: String,
    /// Prompt tokens processed per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_tps: Option<Figure>,
    /// Generated tokens per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_tps: Option<Figure>,
    /// Fixed latency of each call (network, scheduling), seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead_s: Option<Figure>,
    /// Time to first token on the profiler's reference prompt, seconds (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_s: Option<Figure>,
    /// Time to load the model onto the device, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_s: Option<Figure>,
    /// Resident memory while loaded, GB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_gb: Option<Figure>,
    /// Device power while the model generates, W.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_w: Option<Figure>,
    /// Device power while idle, W.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_w: Option<Figure>,
}

/// A quality score of a model on a task.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Quality {
    pub model: String,
    pub task: Task,
    pub value: f64,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<Meter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// The evaluation that produced the score (e.g. `humaneval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// How many tokens one call of a workflow step really takes on one model, learned from runs.
/// Without it the cost model reads the prompt's text (about 4 characters a token) and takes
/// `max_tokens` as the answer's length: a bound, not a forecast, and most answers are much
/// shorter. Keyed by the workflow's name and the step's id, so an edited prompt is relearned
/// as the moving estimate follows the new counts.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StepTokens {
    pub workflow: String,
    pub step: String,
    pub model: String,
    /// Prompt tokens per call.
    pub tokens_in: f64,
    /// Generated tokens per call.
    pub tokens_out: f64,
    /// Calls observed.
    pub n: u32,
    /// Of an agent step: model calls per run of the loop, learned as the lengths are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<f64>,
}

/// How good a workflow's final outputs are when one of its steps runs on one model and
/// every other llm step on its reference (`joule tune`): the figure the planner trusts over a
/// task-level one, because it is measured on the workflow's own prompts. The paired loss
/// compares the same examples with the step on its reference, which separates two models
/// with far fewer examples than two independent means do.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StepQuality {
    pub workflow: String,
    pub step: String,
    pub model: String,
    /// Mean score of the scored outputs, 0..1.
    pub value: f64,
    /// Standard error of `value`.
    pub se: f64,
    /// Examples scored.
    pub n: u32,
    /// The model this step ran on for the reference scores.
    pub reference: String,
    /// Mean of (reference score - this score) over the same examples; 0 for the reference.
    pub loss: f64,
    /// Standard error of `loss`.
    pub loss_se: f64,
    pub source: Source,
    /// What it was measured on (e.g. `examples ticket-triage.jsonl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<String>,
}

impl StepQuality {
    /// Adds one more scored run of this configuration (a benchmark request, say) to the
    /// score's mean and standard error. The paired loss stays `joule tune`'s: a lone run has
    /// no reference run of the same example to be paired with.
    pub fn observe(&mut self, score: f64) {
        let n = f64::from(self.n);
        // The sample variance the stored standard error came from.
        let var = self.se * self.se * n;
        let mean = self.value + (score - self.value) / (n + 1.0);
        let m2 = var * (n - 1.0).max(0.0) + (score - self.value) * (score - mean);
        self.n += 1;
        self.value = mean;
        let n = f64::from(self.n);
        self.se = if n > 1.0 {
            (m2 / (n - 1.0) / n).sqrt()
        } else {
            0.0
        };
    }
}

/// Constant figures of a tool step.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    pub name: String,
    pub latency_s: f64,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// All profile files merged.
#[derive(Debug, Clone, Default)]
pub struct Profiles {
    /// Which files were merged, in order.
    pub names: Vec<String>,
    hardware: BTreeMap<(String, String), Hardware>,
    quality: BTreeMap<(String, Task), Quality>,
    tools: BTreeMap<String, Tool>,
    steps: BTreeMap<(String, String, String), StepTokens>,
    step_quality: BTreeMap<(String, String, String), StepQuality>,
}

/// Keeps `new` over `old` when its source is at least as strong (later files win ties).
fn stronger(old: &mut Option<Figure>, new: &Option<Figure>) {
    if let Some(n) = new
        && old.as_ref().is_none_or(|o| n.source >= o.source)
    {
        *old = Some(n.clone());
    }
}

impl Profiles {
    /// The shipped reference figures alone.
    pub fn reference() -> Self {
        let mut p = Self::default();
        let file = SourceFile::new("profiles/reference.yaml", REFERENCE);
        p.merge(Self::parse(&file).expect("the reference profile is valid (tested)"));
        p
    }

    /// The shipped machine profiles that describe a machine with this CPU.
    pub fn shipped_for(cpu: &str, threads: usize) -> Vec<ProfileFile> {
        SHIPPED
            .iter()
            .map(|&(name, text)| {
                Self::parse(&SourceFile::new(name, text))
                    .expect("shipped profiles are valid (tested)")
            })
            .filter(|f| f.machine.as_ref().is_some_and(|m| m.matches(cpu, threads)))
            .collect()
    }

    pub fn parse(file: &SourceFile) -> Result<ProfileFile, Vec<SpecError>> {
        crate::spec::from_yaml(file)
    }

    pub fn load(path: &Path) -> Result<ProfileFile, Vec<SpecError>> {
        Self::parse(&crate::spec::read_source(path)?)
    }

    /// Adds a file's figures; each figure replaces the current one unless that is stronger.
    pub fn merge(&mut self, file: ProfileFile) {
        self.names.push(file.name);
        for h in file.hardware {
            let entry = self
                .hardware
                .entry((h.model.clone(), h.device.clone()))
                .or_insert_with(|| Hardware {
                    model: h.model.clone(),
                    device: h.device.clone(),
                    ..Hardware::default()
                });
            stronger(&mut entry.prefill_tps, &h.prefill_tps);
            stronger(&mut entry.decode_tps, &h.decode_tps);
            stronger(&mut entry.overhead_s, &h.overhead_s);
            stronger(&mut entry.ttft_s, &h.ttft_s);
            stronger(&mut entry.load_s, &h.load_s);
            stronger(&mut entry.memory_gb, &h.memory_gb);
            stronger(&mut entry.active_w, &h.active_w);
            stronger(&mut entry.idle_w, &h.idle_w);
        }
        for q in file.quality {
            let key = (q.model.clone(), q.task);
            if self.quality.get(&key).is_none_or(|o| q.source >= o.source) {
                self.quality.insert(key, q);
            }
        }
        // All learned from runs: a later file (the calibration profile) wins.
        for t in file.steps {
            self.steps
                .insert((t.workflow.clone(), t.step.clone(), t.model.clone()), t);
        }
        for q in file.step_quality {
            let key = (q.workflow.clone(), q.step.clone(), q.model.clone());
            if self
                .step_quality
                .get(&key)
                .is_none_or(|o| q.source >= o.source)
            {
                self.step_quality.insert(key, q);
            }
        }
        for t in file.tools {
            if self.tools.get(&t.name).is_none_or(|o| t.source >= o.source) {
                self.tools.insert(t.name.clone(), t);
            }
        }
    }

    pub fn hardware(&self, model: &str, device: &str) -> Option<&Hardware> {
        self.hardware.get(&(model.to_string(), device.to_string()))
    }

    pub fn hardware_entries(&self) -> impl Iterator<Item = &Hardware> {
        self.hardware.values()
    }

    pub fn quality(&self, model: &str, task: Task) -> Option<&Quality> {
        self.quality.get(&(model.to_string(), task))
    }

    /// Learned token counts of a step on `model`; failing that, the best-observed counts of
    /// the same step on another model (prompts differ little between tokenizers, and an
    /// answer's length depends more on the prompt than on the model).
    pub fn step_tokens(&self, workflow: &str, step: &str, model: &str) -> Option<&StepTokens> {
        let key = (workflow.to_string(), step.to_string(), model.to_string());
        self.steps.get(&key).or_else(|| {
            self.steps
                .range((workflow.to_string(), step.to_string(), String::new())..)
                .take_while(|((w, s, _), _)| w == workflow && s == step)
                .map(|(_, t)| t)
                .max_by_key(|t| t.n)
        })
    }

    /// The step-level quality of `step` of `workflow` on `model`, when it was measured.
    pub fn step_quality(&self, workflow: &str, step: &str, model: &str) -> Option<&StepQuality> {
        self.step_quality
            .get(&(workflow.to_string(), step.to_string(), model.to_string()))
    }

    pub fn tool(&self, name: &str) -> Option<&Tool> {
        self.tools.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> ProfileFile {
        Profiles::parse(&SourceFile::new(name, text)).unwrap()
    }

    #[test]
    fn shipped_profiles_apply_only_to_their_machine_kind() {
        for (name, text) in SHIPPED {
            let f = Profiles::parse(&SourceFile::new(name, text)).unwrap();
            let m = f
                .machine
                .clone()
                .expect("a shipped profile names its machine");
            assert_eq!(Profiles::shipped_for(&m.cpu, m.threads).len(), 1, "{name}");
            assert_eq!(
                Profiles::shipped_for(&format!("  {}  ", m.cpu.to_uppercase()), m.threads).len(),
                1
            );
            assert!(Profiles::shipped_for(&m.cpu, m.threads * 2).is_empty());
            assert!(Profiles::shipped_for("Some Other CPU", m.threads).is_empty());
        }
    }

    #[test]
    fn measured_beats_published_beats_estimate_whatever_the_order() {
        let measured = "name: m\nhardware:\n  - { model: a, device: cpu, decode_tps: { value: 30, source: measured, meter: clock } }\n";
        let published = "name: p\nhardware:\n  - { model: a, device: cpu, decode_tps: { value: 20, source: published }, prefill_tps: { value: 99, source: published } }\n";
        let estimate = "name: e\nhardware:\n  - { model: a, device: cpu, decode_tps: { value: 10, source: estimate } }\n";
        for order in [
            [measured, published, estimate],
            [estimate, published, measured],
            [published, measured, estimate],
        ] {
            let mut p = Profiles::default();
            for (i, text) in order.iter().enumerate() {
                p.merge(file(&format!("f{i}"), text));
            }
            let h = p.hardware("a", "cpu").unwrap();
            assert_eq!(h.decode_tps.as_ref().unwrap().value, 30.0);
            // A figure only one file has survives merging.
            assert_eq!(h.prefill_tps.as_ref().unwrap().value, 99.0);
        }
    }

    #[test]
    fn a_profile_written_as_yaml_reads_back_the_same() {
        let text = "name: m\nhardware:\n  - { model: a, device: cpu, decode_tps: { value: 30.5, source: measured, meter: clock, n: 3, note: \"median of 3\" }, active_w: { value: 12, source: estimate, meter: estimate } }\n";
        let original = file("m", text);
        let again = file("again", &original.to_yaml().unwrap());
        assert_eq!(again.hardware, original.hardware);
        assert_eq!(again.name, "m");
    }

    #[test]
    fn an_observed_score_updates_the_mean_and_its_standard_error() {
        let mut q = StepQuality {
            workflow: "w".into(),
            step: "s".into(),
            model: "m".into(),
            value: 0.5,
            // Two scores, 0 and 1: sample sd 0.7071, se 0.5.
            se: 0.5,
            n: 2,
            reference: "m".into(),
            loss: 0.0,
            loss_se: 0.0,
            source: Source::Measured,
            eval: None,
        };
        q.observe(1.0);
        // Scores 0, 1, 1: mean 2/3, sample variance 1/3, se sqrt(1/9).
        assert_eq!(q.n, 3);
        assert!((q.value - 2.0 / 3.0).abs() < 1e-12);
        assert!((q.se - (1.0f64 / 9.0).sqrt()).abs() < 1e-12, "{}", q.se);
    }

    #[test]
    fn later_file_wins_between_equal_sources() {
        let mut p = Profiles::default();
        p.merge(file(
            "a",
            "name: a\nquality:\n  - { model: m, task: code, value: 0.1, source: estimate }\n",
        ));
        p.merge(file(
            "b",
            "name: b\nquality:\n  - { model: m, task: code, value: 0.2, source: estimate }\n",
        ));
        assert_eq!(p.quality("m", Task::Code).unwrap().value, 0.2);
    }

    #[test]
    fn reference_profile_covers_every_local_model_on_the_cpu() {
        let p = Profiles::reference();
        let catalog = crate::catalog::Catalog::builtin();
        for m in catalog.models.iter().filter(|m| m.source.is_some()) {
            let h = p
                .hardware(&m.id, "cpu")
                .unwrap_or_else(|| panic!("{} has no cpu profile", m.id));
            assert!(h.decode_tps.is_some() && h.prefill_tps.is_some() && h.active_w.is_some());
        }
    }
}
