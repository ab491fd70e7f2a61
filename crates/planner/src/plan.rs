//! Plans: the planner's answer, as people and programs read it, and the explanation when no
//! plan fits.
//!
//! [`plan`] is the planner's one entry point: it estimates every (step, config), solves the
//! MILP (or a baseline), checks the answer independently, and returns a [`Plan`] whose every
//! figure names its provenance. When nothing fits it returns an [`Infeasible`] that says which
//! budgets conflict, the best each can reach, and the smallest SLO that would work.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::dag::Dag;
use crate::estimate::{self, Environment, Problem};
use crate::figure::{Meter, Source};
use crate::profile::Profiles;
use crate::quality::Level;
use crate::solve::{self, Options, Solution, SolveError, Status, Strategy, Totals};
use crate::spec::units::format_duration;
use crate::spec::{Budget, Kind, Objective};

/// What the caller may change about a planning request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub objective: Option<Objective>,
    /// Replaces the workflow's latency SLO.
    pub slo_s: Option<f64>,
    pub strategy: Strategy,
    pub options: Options,
}

/// One step of a plan. Plans are records (the run store keeps the one a run started with, and
/// a resumed run reads it back), so this is plain data that round-trips through JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "PlannedStepRecord")]
pub struct PlannedStep {
    pub id: String,
    pub kind: Kind,
    pub model: Option<String>,
    pub device: String,
    pub start_s: f64,
    pub end_s: f64,
    /// The step's own predicted time (its calls, however they are spread over the schedule).
    pub latency_s: f64,
    pub energy_j: f64,
    /// A planned figure is always a prediction.
    pub energy_method: Meter,
    pub cost_usd: f64,
    /// How the energy and latency figures were obtained (the weakest source used).
    pub source: Source,
    pub quality: Option<f64>,
    /// Upper confidence bound of the quality this step's config loses against the step's
    /// reference model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_loss: Option<f64>,
    /// Which quality figure `quality` rests on, from how many items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_basis: Option<crate::quality::Basis>,
    pub calls: u32,
    pub tokens_in: f64,
    pub tokens_out: f64,
    /// Calls the token counts were learned from (0: the template's estimate, `max_tokens`).
    #[serde(rename = "tokens_learned_from_calls", skip_serializing_if = "is_zero")]
    pub tokens_learned: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A planned step as stored, including by joule versions whose plans had no `latency_s` (it
/// was then read as the scheduled interval).
#[derive(Deserialize)]
struct PlannedStepRecord {
    id: String,
    kind: Kind,
    model: Option<String>,
    device: String,
    start_s: f64,
    end_s: f64,
    latency_s: Option<f64>,
    energy_j: f64,
    #[serde(default = "estimate")]
    energy_method: Meter,
    cost_usd: f64,
    source: Source,
    quality: Option<f64>,
    #[serde(default)]
    quality_loss: Option<f64>,
    #[serde(default)]
    quality_basis: Option<crate::quality::Basis>,
    calls: u32,
    tokens_in: f64,
    tokens_out: f64,
    #[serde(default, rename = "tokens_learned_from_calls")]
    tokens_learned: u32,
}

fn estimate() -> Meter {
    Meter::Estimate
}

impl From<PlannedStepRecord> for PlannedStep {
    fn from(r: PlannedStepRecord) -> Self {
        Self {
            latency_s: r.latency_s.unwrap_or(r.end_s - r.start_s),
            id: r.id,
            kind: r.kind,
            model: r.model,
            device: r.device,
            start_s: r.start_s,
            end_s: r.end_s,
            energy_j: r.energy_j,
            energy_method: r.energy_method,
            cost_usd: r.cost_usd,
            source: r.source,
            quality: r.quality,
            quality_loss: r.quality_loss,
            quality_basis: r.quality_basis,
            calls: r.calls,
            tokens_in: r.tokens_in,
            tokens_out: r.tokens_out,
            tokens_learned: r.tokens_learned,
        }
    }
}

/// How a plan was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// joule's MILP.
    Milp,
    Static,
    Greedy,
    /// No plan met the SLO; this is the fastest one that keeps the quality floors.
    BestEffort,
    /// No planning at all: every step on `host` (replays and tests fill in configs).
    None,
}

impl From<Strategy> for Method {
    fn from(s: Strategy) -> Self {
        match s {
            Strategy::Joule => Method::Milp,
            Strategy::Static => Method::Static,
            Strategy::Greedy => Method::Greedy,
        }
    }
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Milp => "milp",
            Method::Static => "static",
            Method::Greedy => "greedy",
            Method::BestEffort => "best-effort",
            Method::None => "none",
        }
    }
}

/// A budget of the workflow's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Limit {
    Latency,
    Energy,
    Cost,
    /// The workflow's `quality: { within }` tolerance.
    Quality,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Latency => "latency",
            Limit::Energy => "energy",
            Limit::Cost => "cost",
            Limit::Quality => "quality",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedLoad {
    pub model: String,
    pub device: String,
    pub load_s: f64,
    pub energy_j: f64,
    pub cost_usd: f64,
    pub memory_gb: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SolverInfo {
    pub name: String,
    pub status: Status,
    pub solve_ms: f64,
    pub rounds: u32,
    pub variables: usize,
    pub constraints: usize,
}

/// The planner's answer: a record that round-trips through JSON, so a stored run resumes and
/// reports against exactly the plan it started with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub workflow: String,
    pub objective: Objective,
    pub method: Method,
    /// Whether the plan meets every budget and passed the independent check.
    pub feasible: bool,
    pub steps: Vec<PlannedStep>,
    pub loads: Vec<PlannedLoad>,
    pub totals: Totals,
    pub budget: Budget,
    /// Budgets the plan is at (within 1% of).
    pub binding: Vec<Limit>,
    /// What the plan breaks (baselines may break budgets; a MILP plan never does).
    pub violations: Vec<String>,
    pub solver: SolverInfo,
    /// The profile files the figures came from, in merge order.
    pub profiles: Vec<String>,
}

/// Why no plan fits, and what would.
#[derive(Debug, Clone, Serialize)]
pub struct Infeasible {
    pub workflow: String,
    pub reasons: Vec<String>,
    /// The best each total can reach with no budgets at all.
    pub best: Totals,
    /// The smallest latency SLO that is feasible with the other budgets, if any is.
    pub min_slo_s: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("step `{step}` has no model and device it may run on")]
    NoConfig { step: String, reasons: Vec<String> },
    #[error("no plan meets the budgets of `{}`", .0.workflow)]
    Infeasible(Box<Infeasible>),
    #[error("the solver failed: {0}")]
    Solver(String),
}

impl From<SolveError> for PlanError {
    fn from(e: SolveError) -> Self {
        match e {
            SolveError::NoConfig { step, reasons } => PlanError::NoConfig { step, reasons },
            SolveError::Solver(s) => PlanError::Solver(s),
        }
    }
}

/// Builds the problem of a workflow under a request's overrides.
pub fn problem(
    dag: &Dag,
    catalog: &Catalog,
    profiles: &Profiles,
    env: &Environment,
    req: &Request,
) -> Problem {
    let mut p = estimate::problem(dag, catalog, profiles, env);
    if let Some(o) = req.objective {
        p.objective = o;
    }
    if let Some(slo) = req.slo_s {
        p.budget.latency_s = Some(slo);
    }
    p
}

/// Plans a compiled workflow.
pub fn plan(
    dag: &Dag,
    catalog: &Catalog,
    profiles: &Profiles,
    env: &Environment,
    req: &Request,
) -> Result<Plan, PlanError> {
    let p = problem(dag, catalog, profiles, env, req);
    let solution = solve::place(&p, req.strategy, &req.options)?;
    if solution.status == Status::Infeasible {
        return Err(PlanError::Infeasible(Box::new(explain(
            &p,
            &dag.workflow.name,
            &req.options,
        ))));
    }
    Ok(assemble(dag, &p, &solution, profiles, req.strategy))
}

/// Turns a solution into a plan, running the independent check.
pub fn assemble(
    dag: &Dag,
    p: &Problem,
    s: &Solution,
    profiles: &Profiles,
    strategy: Strategy,
) -> Plan {
    let violations = solve::check(p, s);
    let steps = p
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let c = &step.configs[s.assignment[i]];
            PlannedStep {
                id: step.id.clone(),
                kind: dag.workflow.steps[i].kind.kind(),
                model: c.model.clone(),
                device: c.device.clone(),
                start_s: s.schedule.start[i],
                end_s: s.schedule.end[i],
                latency_s: c.latency_s,
                energy_j: c.energy_j,
                energy_method: Meter::Estimate,
                cost_usd: c.cost_usd,
                source: c.source,
                quality: c.quality,
                quality_loss: c.loss,
                quality_basis: c.basis.clone(),
                calls: c.calls,
                tokens_in: c.tokens_in,
                tokens_out: c.tokens_out,
                tokens_learned: c.tokens_learned,
            }
        })
        .collect();
    let mut used: Vec<usize> = s
        .assignment
        .iter()
        .enumerate()
        .filter_map(|(i, &c)| p.steps[i].configs[c].residency)
        .collect();
    used.sort_unstable();
    used.dedup();
    let loads = used
        .iter()
        .map(|&r| {
            let res = &p.residencies[r];
            PlannedLoad {
                model: res.model.clone(),
                device: p.resources[res.resource].name.clone(),
                load_s: res.load_s,
                energy_j: res.energy_j,
                cost_usd: res.cost_usd,
                memory_gb: res.memory_gb,
            }
        })
        .collect();
    let at = |limit: Option<f64>, v: f64| limit.is_some_and(|l| v >= 0.99 * l);
    let mut binding = Vec::new();
    if at(p.budget.latency_s, s.totals.latency_s) {
        binding.push(Limit::Latency);
    }
    if at(p.budget.energy_j, s.totals.energy_j) {
        binding.push(Limit::Energy);
    }
    if at(p.budget.cost_usd, s.totals.cost_usd) {
        binding.push(Limit::Cost);
    }
    if p.budget.quality_loss.is_some_and(|q| q > 0.0)
        && at(p.budget.quality_loss, s.totals.quality_loss)
    {
        binding.push(Limit::Quality);
    }
    Plan {
        workflow: dag.workflow.name.clone(),
        objective: p.objective,
        method: strategy.into(),
        feasible: violations.is_empty(),
        steps,
        loads,
        totals: s.totals,
        budget: p.budget,
        binding,
        violations,
        solver: SolverInfo {
            name: s.stats.solver.clone(),
            status: s.status,
            solve_ms: s.stats.solve_ms,
            rounds: s.stats.rounds,
            variables: s.stats.variables,
            constraints: s.stats.constraints,
        },
        profiles: profiles.names.clone(),
    }
}

/// A plan with no predictions: every step on `host`, nothing solved. Replays and tests fill in
/// the configs they need; the executor only reads each step's model and device.
pub fn empty(wf: &crate::spec::Workflow) -> Plan {
    Plan {
        workflow: wf.name.clone(),
        objective: wf.objective,
        method: Method::None,
        feasible: true,
        steps: wf
            .steps
            .iter()
            .map(|s| PlannedStep {
                id: s.id.clone(),
                kind: s.kind.kind(),
                model: None,
                device: "host".into(),
                start_s: 0.0,
                end_s: 0.0,
                latency_s: 0.0,
                energy_j: 0.0,
                energy_method: Meter::Estimate,
                cost_usd: 0.0,
                source: Source::Estimate,
                quality: None,
                quality_loss: None,
                quality_basis: None,
                calls: 1,
                tokens_in: 0.0,
                tokens_out: 0.0,
                tokens_learned: 0,
            })
            .collect(),
        loads: Vec::new(),
        totals: Totals::default(),
        budget: wf.budget,
        binding: Vec::new(),
        violations: Vec::new(),
        solver: SolverInfo {
            name: "none".into(),
            status: Status::Heuristic,
            solve_ms: 0.0,
            rounds: 0,
            variables: 0,
            constraints: 0,
        },
        profiles: Vec::new(),
    }
}

/// Works out why a problem is infeasible: the best each total can reach alone, which budgets
/// are out of reach on their own, and the smallest SLO the other budgets allow.
pub fn explain(p: &Problem, workflow: &str, opts: &Options) -> Infeasible {
    let unconstrained = |objective: Objective, budget: Budget| {
        let mut q = p.clone();
        q.objective = objective;
        q.budget = budget;
        solve::solve(&q, opts)
            .ok()
            .filter(|s| s.status != Status::Infeasible)
    };
    let none = Budget::default();
    let best = Totals {
        latency_s: unconstrained(Objective::Latency, none)
            .map_or(f64::INFINITY, |s| s.totals.latency_s),
        energy_j: unconstrained(Objective::Energy, none)
            .map_or(f64::INFINITY, |s| s.totals.energy_j),
        cost_usd: unconstrained(Objective::Cost, none).map_or(f64::INFINITY, |s| s.totals.cost_usd),
        quality_loss: 0.0,
    };
    let b = p.budget;
    let mut reasons = Vec::new();
    if let Some(l) = b.latency_s.filter(|&l| best.latency_s > l) {
        reasons.push(format!(
            "the latency SLO of {} is below the fastest possible run, {}",
            format_duration(l),
            format_duration(best.latency_s)
        ));
    }
    if let Some(e) = b.energy_j.filter(|&e| best.energy_j > e) {
        reasons.push(format!(
            "the energy budget of {e:.0} J is below the least possible, {:.0} J",
            best.energy_j
        ));
    }
    if let Some(c) = b.cost_usd.filter(|&c| best.cost_usd > c) {
        reasons.push(format!(
            "the cost budget of ${c:.6} is below the least possible, ${:.6}",
            best.cost_usd
        ));
    }
    // The fastest plan within the energy and cost budgets: the smallest feasible SLO.
    let min_slo = unconstrained(
        Objective::Latency,
        Budget {
            latency_s: None,
            ..b
        },
    )
    .map(|s| s.totals.latency_s);
    if reasons.is_empty() {
        let others: Vec<&str> = [
            b.energy_j.map(|_| "energy"),
            b.cost_usd.map(|_| "cost"),
            b.quality_loss.map(|_| "quality"),
        ]
        .into_iter()
        .flatten()
        .collect();
        match (b.latency_s, min_slo) {
            (Some(l), Some(m)) if m > l => reasons.push(format!(
                "the latency SLO of {} conflicts with the {} budget: within it the fastest run takes {}",
                format_duration(l),
                others.join(" and "),
                format_duration(m)
            )),
            (_, None) if b.energy_j.is_some() && b.cost_usd.is_some() => {
                reasons.push("the energy and cost budgets conflict: no plan meets both".to_string())
            }
            _ => reasons.push("the budgets cannot all be met at once".to_string()),
        }
    }
    Infeasible {
        workflow: workflow.to_string(),
        reasons,
        best,
        min_slo_s: min_slo,
    }
}

impl Plan {
    /// The step-level quality figures a run of this plan observes: every step's reference
    /// figure when every llm step ran on its reference, the one changed step's figure when only
    /// one did not, nothing otherwise (a score with two steps changed belongs to no figure).
    pub fn observed_quality(&self) -> Vec<(String, String)> {
        let llm: Vec<(&str, &str, Level)> = self
            .steps
            .iter()
            .filter_map(|s| {
                let b = s.quality_basis.as_ref()?;
                Some((s.id.as_str(), s.model.as_deref()?, b.level))
            })
            .collect();
        let changed: Vec<&(&str, &str, Level)> = llm
            .iter()
            .filter(|(_, _, level)| *level != Level::Reference)
            .collect();
        let pick = |v: Vec<&(&str, &str, Level)>| {
            v.into_iter()
                .map(|(s, m, _)| (s.to_string(), m.to_string()))
                .collect()
        };
        match changed.len() {
            0 => pick(llm.iter().collect()),
            1 => pick(changed),
            _ => Vec::new(),
        }
    }

    /// The plan as a table for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "plan for `{}`: {} objective, {} ({:?}) in {:.1} ms{}",
            self.workflow,
            objective_name(self.objective),
            self.solver.name,
            self.solver.status,
            self.solver.solve_ms,
            if self.solver.rounds > 1 {
                format!(", {} rounds", self.solver.rounds)
            } else {
                String::new()
            },
        );
        let model_label = |s: &PlannedStep| match (&s.model, s.calls) {
            (Some(m), c) if c > 1 => format!("{m} x{c}"),
            (Some(m), _) => m.clone(),
            (None, _) => format!("({})", s.kind),
        };
        let model_w = self
            .steps
            .iter()
            .map(|s| model_label(s).len())
            .max()
            .unwrap_or(5)
            .max(5);
        let id_w = self
            .steps
            .iter()
            .map(|s| s.id.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let dev_w = self
            .steps
            .iter()
            .map(|s| s.device.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let _ = writeln!(
            out,
            "{:<id_w$}  {:<model_w$}  {:<dev_w$}  {:>8}  {:>8}  {:>10}  {:>10}  {:<9}  quality",
            "step", "model", "device", "start", "end", "energy", "cost", "source"
        );
        let mut order: Vec<&PlannedStep> = self.steps.iter().collect();
        order.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
        for s in order {
            let model = model_label(s);
            let _ = writeln!(
                out,
                "{:<id_w$}  {:<model_w$}  {:<dev_w$}  {:>8}  {:>8}  {:>10}  {:>10}  {:<9}  {}",
                s.id,
                model,
                s.device,
                format_duration(s.start_s),
                format_duration(s.end_s),
                format_energy(s.energy_j),
                format_cost(s.cost_usd),
                s.source.to_string(),
                quality_label(s),
            );
        }
        for l in &self.loads {
            let _ = writeln!(
                out,
                "load {} on {}: {}, {}, {:.1} GB",
                l.model,
                l.device,
                format_duration(l.load_s),
                format_energy(l.energy_j),
                l.memory_gb
            );
        }
        let limit =
            |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or_else(|| "no limit".to_string(), f);
        let _ = writeln!(
            out,
            "totals: latency {} (SLO {}), energy {} (budget {}), cost {} (budget {})",
            format_duration(self.totals.latency_s),
            limit(self.budget.latency_s, &format_duration),
            format_energy(self.totals.energy_j),
            limit(self.budget.energy_j, &format_energy),
            format_cost(self.totals.cost_usd),
            limit(self.budget.cost_usd, &format_cost),
        );
        if let Some(q) = self.budget.quality_loss {
            let _ = writeln!(
                out,
                "quality: predicted loss against the reference at most {:.3} (95% bound; tolerance {q})",
                self.totals.quality_loss
            );
        }
        let _ = writeln!(
            out,
            "binding: {}",
            if self.binding.is_empty() {
                "none".to_string()
            } else {
                self.binding
                    .iter()
                    .map(|l| l.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        let _ = writeln!(
            out,
            "figures: predicted from profiles ({}); energy = profiled power x predicted time",
            self.profiles.join(", ")
        );
        for v in &self.violations {
            let _ = writeln!(out, "VIOLATION: {v}");
        }
        out
    }

    /// The plan as the JSON object `joule plan --json` prints and the run store keeps.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl Infeasible {
    pub fn to_text(&self) -> String {
        let mut out = format!("no plan meets the budgets of `{}`:\n", self.workflow);
        for r in &self.reasons {
            let _ = writeln!(out, "  - {r}");
        }
        let _ = writeln!(
            out,
            "best reachable alone: latency {}, energy {}, cost {}",
            format_duration(self.best.latency_s),
            format_energy(self.best.energy_j),
            format_cost(self.best.cost_usd)
        );
        match self.min_slo_s {
            Some(m) => {
                let _ = writeln!(
                    out,
                    "smallest feasible SLO with the other budgets: {} (try --slo {})",
                    format_duration(m),
                    slo_arg(m)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "no SLO is feasible with the other budgets; raise the energy or cost budget"
                );
            }
        }
        out
    }
}

/// Which quality figure a step's config rests on, in a few words.
fn quality_label(s: &PlannedStep) -> String {
    let Some(b) = &s.quality_basis else {
        return "-".into();
    };
    let n = b.n.map(|n| format!(" n={n}")).unwrap_or_default();
    let value = s.quality.map(|q| format!("{q:.2} ")).unwrap_or_default();
    match b.level {
        Level::Reference => format!("{value}reference{n}"),
        Level::Step | Level::Task => format!(
            "{value}{}{n} vs {}, loss <= {:.3}",
            if b.level == Level::Step {
                "step"
            } else {
                "task"
            },
            b.reference,
            s.quality_loss.unwrap_or(0.0)
        ),
        Level::None => format!("unmeasured (reference {})", b.reference),
    }
}

/// A `--slo` argument just above `seconds`, rounded up so it is feasible.
fn slo_arg(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{}ms", (seconds * 1e3).ceil() as u64 + 1)
    } else {
        format!("{:.1}s", (seconds * 10.0).ceil() / 10.0 + 0.1)
    }
}

fn objective_name(o: Objective) -> &'static str {
    match o {
        Objective::Energy => "energy",
        Objective::Cost => "cost",
        Objective::Latency => "latency",
    }
}

pub fn format_energy(j: f64) -> String {
    if j >= 1e4 {
        format!("{:.1} kJ", j / 1e3)
    } else {
        format!("{j:.1} J")
    }
}

pub fn format_cost(usd: f64) -> String {
    format!("${usd:.6}")
}
