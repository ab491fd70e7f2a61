//! The placement MILP, solved exactly with HiGHS, plus the baselines it is compared against.
//!
//! Variables: a binary per (step, config), exactly one per step; a binary per model residency
//! (a model loaded on a device, paid once); a start time per step; the makespan. Constraints:
//! precedence along DAG edges; loads finish before a device's first step; makespan within the
//! latency SLO; energy and cost within their budgets; resident models fit in device memory.
//! Steps that share a one-at-a-time device must not overlap: that disjunction needs an ordering
//! binary per pair of steps, O(n^2) of them, so they are added lazily, only for pairs that
//! overlap in the current optimum, and the MILP is re-solved until no pair overlaps. Every
//! added constraint is valid, so the final optimum is optimal for the full model; a load bound
//! per device (its busy time fits in the makespan) keeps the number of rounds small.
//!
//! The solver's answer is never trusted as is: [`evaluate`] recomputes the schedule (a list
//! schedule in the solver's order) and the totals from the problem's own figures, and
//! [`check`] verifies every constraint independently before a plan is used.

mod baseline;
mod check;
mod exhaustive;
mod heuristic;
mod milp;
mod schedule;

use serde::{Deserialize, Serialize};

use crate::estimate::Problem;
use crate::spec::{Budget, Objective};

use baseline::baseline;
use check::reachability;
pub use check::{budget_violations, check};
pub use exhaustive::exhaustive;
use exhaustive::fits_memory;
pub use heuristic::heuristic;
pub use milp::solve;
pub use schedule::evaluate;
use schedule::{evaluate_traced, load_done, used_residencies};

/// Weight of the tie-breaking objectives relative to the primary one, after normalising each
/// to its largest possible value: small enough never to trade primary value for them.
const TIE_WEIGHT: f64 = 1e-5;
/// Slack on constraint checks, for the solver's floating-point tolerances.
const TOLERANCE: f64 = 1e-6;

/// Predicted totals of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub latency_s: f64,
    pub energy_j: f64,
    pub cost_usd: f64,
    /// Predicted loss of output quality against the reference: the steps' upper confidence
    /// bounds, summed (0 when every step runs on its reference or is unmeasured).
    #[serde(default)]
    pub quality_loss: f64,
}

/// When each step runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub start: Vec<f64>,
    pub end: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Proven optimal.
    Optimal,
    /// Feasible, but the time limit stopped the proof.
    TimeLimit,
    /// No assignment meets the budgets.
    Infeasible,
    /// A baseline's heuristic answer (no optimisation).
    Heuristic,
}

/// A solved placement: a config per step, a schedule, totals.
#[derive(Debug, Clone, Serialize)]
pub struct Solution {
    /// Index into each step's configs.
    pub assignment: Vec<usize>,
    pub schedule: Schedule,
    pub totals: Totals,
    /// The scalar the solver minimised (primary objective plus tie-breakers).
    pub objective_value: f64,
    pub status: Status,
    pub stats: Stats,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub solver: String,
    pub solve_ms: f64,
    /// MILP solves, one per round of lazily added no-overlap pairs.
    pub rounds: u32,
    pub variables: usize,
    pub constraints: usize,
    pub overlap_pairs: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Wall-clock limit for the whole solve, seconds.
    pub time_limit_s: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self { time_limit_s: 10.0 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SolveError {
    #[error("step `{step}` has no config it may run on")]
    NoConfig { step: String, reasons: Vec<String> },
    #[error("the solver failed: {0}")]
    Solver(String),
}

/// The largest value each total can take, for normalising the objective.
fn scales(p: &Problem) -> Totals {
    let mut s = Totals::default();
    for step in &p.steps {
        let max =
            |f: fn(&crate::estimate::Config) -> f64| step.configs.iter().map(f).fold(0.0, f64::max);
        s.latency_s += max(|c| c.latency_s);
        s.energy_j += max(|c| c.energy_j);
        s.cost_usd += max(|c| c.cost_usd);
    }
    for r in &p.residencies {
        s.latency_s += r.load_s;
        s.energy_j += r.energy_j;
        s.cost_usd += r.cost_usd;
    }
    Totals {
        latency_s: s.latency_s.max(1e-3),
        energy_j: s.energy_j.max(1e-3),
        cost_usd: s.cost_usd.max(1e-6),
        quality_loss: 0.0,
    }
}

/// Weights of (latency, energy, cost) in the scalar objective: each total divided by its
/// largest possible value, so the scalar is O(1) whatever the units, and the tie-breakers
/// scaled down by [`TIE_WEIGHT`].
fn weights(p: &Problem) -> (f64, f64, f64) {
    let s = scales(p);
    let (l, e, c) = (1.0 / s.latency_s, 1.0 / s.energy_j, 1.0 / s.cost_usd);
    match p.objective {
        Objective::Energy => (TIE_WEIGHT * l, e, TIE_WEIGHT * c),
        Objective::Cost => (TIE_WEIGHT * l, TIE_WEIGHT * e, c),
        Objective::Latency => (l, TIE_WEIGHT * e, TIE_WEIGHT * c),
    }
}

/// The scalar objective of some totals.
pub fn objective_value(p: &Problem, t: &Totals) -> f64 {
    let (wl, we, wc) = weights(p);
    wl * t.latency_s + we * t.energy_j + wc * t.cost_usd
}

/// The primary objective of some totals, in its own unit.
pub fn primary(p: &Problem, t: &Totals) -> f64 {
    match p.objective {
        Objective::Energy => t.energy_j,
        Objective::Cost => t.cost_usd,
        Objective::Latency => t.latency_s,
    }
}

/// How steps are placed: joule's MILP over the whole workflow, or one of the baselines it is
/// compared against. One enum for the concept, from the command line (`--baseline`,
/// `--policies`) to the benchmark's CSV.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// The MILP over the whole workflow, within its budgets.
    #[default]
    Joule,
    /// Every llm step on the single best-quality model, on its fastest device: what a
    /// hand-tuned application does.
    Static,
    /// Each step alone on its cheapest config (by the objective) that meets its quality floor.
    Greedy,
}

impl Strategy {
    pub const ALL: [Strategy; 3] = [Strategy::Static, Strategy::Greedy, Strategy::Joule];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Joule => "joule",
            Strategy::Static => "static",
            Strategy::Greedy => "greedy",
        }
    }

    /// Whether this is one of the baselines (no optimisation).
    pub fn is_baseline(self) -> bool {
        self != Strategy::Joule
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|x| x.as_str() == s.trim())
            .ok_or_else(|| format!("unknown strategy `{s}`; use static, greedy or joule"))
    }
}

/// Places the steps with `strategy`: the MILP, or a baseline's assignment scheduled in DAG
/// order.
pub fn place(p: &Problem, strategy: Strategy, opts: &Options) -> Result<Solution, SolveError> {
    match strategy {
        Strategy::Joule => solve(p, opts),
        baseline => self::baseline(p, baseline),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimate::{Config, Residency, Resource, StepChoices};
    use crate::figure::Source;

    fn config(resource: usize, residency: usize, latency: f64) -> Config {
        Config {
            model: Some(format!("m{residency}")),
            device: "gpu".into(),
            resource: Some(resource),
            residency: Some(residency),
            latency_s: latency,
            energy_j: 0.0,
            cost_usd: 0.0,
            quality: None,
            loss: None,
            basis: None,
            calls: 1,
            tokens_in: 0.0,
            tokens_out: 0.0,
            tokens_learned: 0,
            source: Source::Estimate,
        }
    }

    #[test]
    fn two_parallel_steps_on_one_device_are_serialised() {
        let p = Problem {
            steps: (0..2)
                .map(|i| StepChoices {
                    id: format!("s{i}"),
                    configs: vec![config(0, i, 0.5)],
                    preds: vec![],
                    excluded: vec![],
                })
                .collect(),
            resources: vec![Resource {
                name: "gpu".into(),
                exclusive: true,
                memory_gb: Some(4.0),
            }],
            residencies: (0..2)
                .map(|i| Residency {
                    model: format!("m{i}"),
                    resource: 0,
                    load_s: 0.0,
                    energy_j: 0.0,
                    cost_usd: 0.0,
                    memory_gb: 0.5,
                })
                .collect(),
            budget: Budget::default(),
            objective: Objective::Energy,
        };
        let s = solve(&p, &Options::default()).unwrap();
        assert_eq!(s.status, Status::Optimal);
        assert!((s.totals.latency_s - 1.0).abs() < 1e-6, "{:?}", s.totals);
        assert!(check(&p, &s).is_empty(), "{:?}", check(&p, &s));
    }
}
