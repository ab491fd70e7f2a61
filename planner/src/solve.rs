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

use std::collections::BTreeSet;
use std::time::Instant;

use good_lp::{
    Expression, ProblemVariables, Solution as _, SolverModel, Variable, constraint, highs, variable,
};
use serde::Serialize;

use crate::estimate::Problem;
use crate::spec::{Budget, Objective};

/// Weight of the tie-breaking objectives relative to the primary one, after normalising each
/// to its largest possible value: small enough never to trade primary value for them.
const TIE_WEIGHT: f64 = 1e-5;
/// Slack on constraint checks, for the solver's floating-point tolerances.
const TOLERANCE: f64 = 1e-6;

/// Predicted totals of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Totals {
    pub latency_s: f64,
    pub energy_j: f64,
    pub cost_usd: f64,
}

/// When each step runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Schedule {
    pub start: Vec<f64>,
    pub end: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// Residencies used by an assignment.
fn used_residencies(p: &Problem, assignment: &[usize]) -> BTreeSet<usize> {
    assignment
        .iter()
        .enumerate()
        .filter_map(|(s, &c)| p.steps[s].configs[c].residency)
        .collect()
}

/// When each resource's model loads are done (loads run back to back from time zero).
fn load_done(p: &Problem, used: &BTreeSet<usize>) -> Vec<f64> {
    let mut done = vec![0.0; p.resources.len()];
    for &r in used {
        done[p.residencies[r].resource] += p.residencies[r].load_s;
    }
    done
}

/// Recomputes the schedule of an assignment by list scheduling: steps in order of `priority`
/// (ties by index), each as early as its predecessors, its device and its model load allow.
/// With the solver's start times as priority this reproduces (or compacts) its schedule.
pub fn evaluate(p: &Problem, assignment: &[usize], priority: &[f64]) -> (Schedule, Totals) {
    let (schedule, totals, _) = evaluate_traced(p, assignment, priority);
    (schedule, totals)
}

/// [`evaluate`], also returning for each step the step whose end fixed its start (a
/// predecessor, or the previous step on its device), which traces the critical chain.
#[allow(clippy::type_complexity)]
fn evaluate_traced(
    p: &Problem,
    assignment: &[usize],
    priority: &[f64],
) -> (Schedule, Totals, Vec<Option<usize>>) {
    let n = p.steps.len();
    let mut blocker: Vec<Option<usize>> = vec![None; n];
    let mut last_on: Vec<Option<usize>> = vec![None; p.resources.len()];
    let used = used_residencies(p, assignment);
    let loads = load_done(p, &used);
    // A precedence-respecting order: repeatedly take the ready step of lowest priority.
    let mut indegree: Vec<usize> = p.steps.iter().map(|s| s.preds.len()).collect();
    let mut succs = vec![Vec::new(); n];
    for (i, s) in p.steps.iter().enumerate() {
        for &d in &s.preds {
            succs[d].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut free = loads.clone();
    let mut schedule = Schedule {
        start: vec![0.0; n],
        end: vec![0.0; n],
    };
    while !ready.is_empty() {
        let k = (0..ready.len())
            .min_by(|&a, &b| {
                priority[ready[a]]
                    .total_cmp(&priority[ready[b]])
                    .then(ready[a].cmp(&ready[b]))
            })
            .unwrap_or(0);
        let i = ready.swap_remove(k);
        let config = &p.steps[i].configs[assignment[i]];
        let mut start = 0.0;
        for &d in &p.steps[i].preds {
            if schedule.end[d] > start {
                start = schedule.end[d];
                blocker[i] = Some(d);
            }
        }
        if let Some(r) = config.residency
            && loads[p.residencies[r].resource] > start
        {
            start = loads[p.residencies[r].resource];
            blocker[i] = None;
        }
        if let Some(r) = config.resource {
            if free[r] > start {
                start = free[r];
                blocker[i] = last_on[r];
            }
            free[r] = start + config.latency_s;
            last_on[r] = Some(i);
        }
        schedule.start[i] = start;
        schedule.end[i] = start + config.latency_s;
        for &j in &succs[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(j);
            }
        }
    }
    let mut totals = Totals {
        latency_s: schedule.end.iter().copied().fold(0.0, f64::max),
        ..Totals::default()
    };
    for (s, &c) in assignment.iter().enumerate() {
        let config = &p.steps[s].configs[c];
        totals.energy_j += config.energy_j;
        totals.cost_usd += config.cost_usd;
    }
    for &r in &used {
        totals.energy_j += p.residencies[r].energy_j;
        totals.cost_usd += p.residencies[r].cost_usd;
    }
    (schedule, totals, blocker)
}

/// Independently verifies a solution against every constraint of the problem. Returns the
/// violations; an empty list means the plan can be trusted.
pub fn check(p: &Problem, s: &Solution) -> Vec<String> {
    let mut v = Vec::new();
    let n = p.steps.len();
    if s.assignment.len() != n || s.schedule.start.len() != n {
        return vec!["the solution does not cover every step".into()];
    }
    let tol = |x: f64| TOLERANCE * (1.0 + x.abs());
    for (i, step) in p.steps.iter().enumerate() {
        let Some(config) = step.configs.get(s.assignment[i]) else {
            v.push(format!(
                "step `{}` has no config {}",
                step.id, s.assignment[i]
            ));
            continue;
        };
        let dur = s.schedule.end[i] - s.schedule.start[i];
        if (dur - config.latency_s).abs() > tol(config.latency_s) {
            v.push(format!(
                "step `{}` lasts {dur}s, its config {}s",
                step.id, config.latency_s
            ));
        }
        if s.schedule.start[i] < -TOLERANCE {
            v.push(format!("step `{}` starts before zero", step.id));
        }
        for &d in &step.preds {
            if s.schedule.start[i] + tol(s.schedule.end[d]) < s.schedule.end[d] {
                v.push(format!(
                    "step `{}` starts before `{}` ends",
                    step.id, p.steps[d].id
                ));
            }
        }
    }
    let used = used_residencies(p, &s.assignment);
    let loads = load_done(p, &used);
    for (r, res) in p.resources.iter().enumerate() {
        let mut on: Vec<usize> = (0..n)
            .filter(|&i| {
                p.steps[i]
                    .configs
                    .get(s.assignment[i])
                    .is_some_and(|c| c.resource == Some(r))
            })
            .collect();
        on.sort_by(|&a, &b| s.schedule.start[a].total_cmp(&s.schedule.start[b]));
        for w in on.windows(2) {
            if s.schedule.start[w[1]] + tol(s.schedule.end[w[0]]) < s.schedule.end[w[0]] {
                v.push(format!(
                    "`{}` and `{}` overlap on {}",
                    p.steps[w[0]].id, p.steps[w[1]].id, res.name
                ));
            }
        }
        for i in 0..n {
            let c = &p.steps[i].configs[s.assignment[i]];
            if c.residency.is_some_and(|x| p.residencies[x].resource == r)
                && s.schedule.start[i] + tol(loads[r]) < loads[r]
            {
                v.push(format!(
                    "`{}` starts before its model is loaded on {}",
                    p.steps[i].id, res.name
                ));
            }
        }
        if let Some(limit) = res.memory_gb {
            let mem: f64 = used
                .iter()
                .filter(|&&x| p.residencies[x].resource == r)
                .map(|&x| p.residencies[x].memory_gb)
                .sum();
            if mem > limit + tol(limit) {
                v.push(format!(
                    "models on {} need {mem:.1} GB of {limit} GB",
                    res.name
                ));
            }
        }
    }
    let (_, totals) = evaluate(p, &s.assignment, &s.schedule.start);
    let makespan = s.schedule.end.iter().copied().fold(0.0, f64::max);
    if (makespan - s.totals.latency_s).abs() > tol(makespan)
        || (totals.energy_j - s.totals.energy_j).abs() > tol(totals.energy_j)
        || (totals.cost_usd - s.totals.cost_usd).abs() > tol(totals.cost_usd)
    {
        v.push("the reported totals differ from the recomputed ones".into());
    }
    v.extend(budget_violations(&p.budget, &s.totals));
    v
}

/// Budgets that some totals exceed, as messages.
pub fn budget_violations(b: &Budget, t: &Totals) -> Vec<String> {
    let over =
        |limit: Option<f64>, value: f64| limit.is_some_and(|l| value > l + TOLERANCE * (1.0 + l));
    let mut v = Vec::new();
    if over(b.latency_s, t.latency_s) {
        v.push(format!(
            "latency {:.2}s exceeds the SLO of {:.2}s",
            t.latency_s,
            b.latency_s.unwrap_or(0.0)
        ));
    }
    if over(b.energy_j, t.energy_j) {
        v.push(format!(
            "energy {:.1}J exceeds the budget of {:.1}J",
            t.energy_j,
            b.energy_j.unwrap_or(0.0)
        ));
    }
    if over(b.cost_usd, t.cost_usd) {
        v.push(format!(
            "cost ${:.6} exceeds the budget of ${:.6}",
            t.cost_usd,
            b.cost_usd.unwrap_or(0.0)
        ));
    }
    v
}

/// Pairs of steps ordered by the DAG (one reaches the other), as a reachability matrix.
fn reachability(p: &Problem) -> Vec<Vec<bool>> {
    let n = p.steps.len();
    let mut reach = vec![vec![false; n]; n];
    // Steps are not necessarily in topological order; iterate to a fixpoint in Kahn order.
    let mut indegree: Vec<usize> = p.steps.iter().map(|s| s.preds.len()).collect();
    let mut succs = vec![Vec::new(); n];
    for (i, s) in p.steps.iter().enumerate() {
        for &d in &s.preds {
            succs[d].push(i);
        }
    }
    let mut queue: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = queue.pop() {
        order.push(i);
        for &j in &succs[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                queue.push(j);
            }
        }
    }
    for &i in &order {
        for &d in &p.steps[i].preds {
            reach[d][i] = true;
            for row in reach.iter_mut() {
                if row[d] {
                    row[i] = true;
                }
            }
        }
    }
    reach
}

/// Solves the problem to optimality (or to the time limit).
pub fn solve(p: &Problem, opts: &Options) -> Result<Solution, SolveError> {
    let started = Instant::now();
    if let Some(step) = p.steps.iter().find(|s| s.configs.is_empty()) {
        return Err(SolveError::NoConfig {
            step: step.id.clone(),
            reasons: step.excluded.clone(),
        });
    }
    let n = p.steps.len();
    let reach = reachability(p);
    let scale = scales(p);
    let horizon = p
        .budget
        .latency_s
        .map_or(scale.latency_s, |slo| slo.min(scale.latency_s.max(slo)));
    // Slack above the exact bound keeps boundary-tight schedules inside the solver's tolerances.
    let horizon = horizon.max(1e-6) * (1.0 + 1e-6);

    let mut pairs: BTreeSet<(usize, usize, usize)> = BTreeSet::new();
    let mut stats = Stats {
        solver: "highs".into(),
        ..Stats::default()
    };
    // The best plan known so far, returned if the time limit passes first.
    let mut warm: Option<(Vec<usize>, Schedule)> =
        heuristic(p, opts.time_limit_s / 4.0).map(|(a, s, _)| (a, s));
    loop {
        stats.rounds += 1;
        let remaining = opts.time_limit_s - started.elapsed().as_secs_f64();
        stats.overlap_pairs = pairs.len();
        if remaining <= 0.0 {
            return finish_time_limit(p, warm, stats, started);
        }
        let (assignment, starts, proven) =
            match milp_round(p, &pairs, horizon, remaining, &mut stats)? {
                Round::Solved {
                    assignment,
                    starts,
                    proven,
                } => (assignment, starts, proven),
                Round::Infeasible => {
                    stats.solve_ms = started.elapsed().as_secs_f64() * 1e3;
                    return Ok(Solution {
                        assignment: Vec::new(),
                        schedule: Schedule::default(),
                        totals: Totals::default(),
                        objective_value: f64::INFINITY,
                        status: Status::Infeasible,
                        stats,
                    });
                }
                Round::NoSolution => return finish_time_limit(p, warm, stats, started),
            };

        // Overlaps on exclusive resources in the solver's own schedule.
        let mut new_pairs = Vec::new();
        for r in (0..p.resources.len()).filter(|&r| p.resources[r].exclusive) {
            let on_r: Vec<usize> = (0..n)
                .filter(|&s| p.steps[s].configs[assignment[s]].resource == Some(r))
                .collect();
            for (a, &i) in on_r.iter().enumerate() {
                for &j in &on_r[a + 1..] {
                    if reach[i][j] || reach[j][i] || pairs.contains(&(i, j, r)) {
                        continue;
                    }
                    let (ei, ej) = (
                        starts[i] + p.steps[i].configs[assignment[i]].latency_s,
                        starts[j] + p.steps[j].configs[assignment[j]].latency_s,
                    );
                    if starts[i] < ej - TOLERANCE * (1.0 + ej)
                        && starts[j] < ei - TOLERANCE * (1.0 + ei)
                    {
                        new_pairs.push((i, j, r));
                    }
                }
            }
        }
        let (schedule, totals) = evaluate(p, &assignment, &starts);
        // When latency is only a tie-breaker, the schedule cannot change the primary objective:
        // if the relaxation's assignment, list-scheduled, meets every budget, its primary value
        // is the relaxation's, a lower bound for the full model, so it is optimal. Only the
        // latency tie-break is then best effort rather than proven.
        let settled =
            p.objective != Objective::Latency && budget_violations(&p.budget, &totals).is_empty();
        if new_pairs.is_empty() || settled {
            stats.solve_ms = started.elapsed().as_secs_f64() * 1e3;
            return Ok(Solution {
                objective_value: objective_value(p, &totals),
                assignment,
                schedule,
                totals,
                status: if proven {
                    Status::Optimal
                } else {
                    Status::TimeLimit
                },
                stats,
            });
        }
        // A primal heuristic for when the SLO binds: the relaxation solved with a tighter SLO
        // leaves room for the serialisation its list schedule adds, so its plan often fits
        // the real SLO; it becomes the fallback while the exact rounds go on.
        if stats.rounds == 1 {
            for factor in [0.9, 0.75, 0.6] {
                let budget = (opts.time_limit_s - started.elapsed().as_secs_f64()) / 4.0;
                if budget <= 0.0 {
                    break;
                }
                let mut scratch = Stats::default();
                if let Round::Solved {
                    assignment, starts, ..
                } = milp_round(p, &BTreeSet::new(), horizon * factor, budget, &mut scratch)?
                {
                    let (schedule, tighter) = evaluate(p, &assignment, &starts);
                    if budget_violations(&p.budget, &tighter).is_empty() {
                        if improves(p, &warm, &tighter) {
                            warm = Some((assignment, schedule));
                        }
                        break;
                    }
                }
            }
        }
        // The list schedule of this assignment serialises the overlaps: the fallback plan
        // whenever it meets the budgets and beats the one known.
        if improves(p, &warm, &totals) && budget_violations(&p.budget, &totals).is_empty() {
            warm = Some((assignment, schedule));
        }
        pairs.extend(new_pairs);
    }
}

/// What one MILP solve gave.
enum Round {
    Solved {
        assignment: Vec<usize>,
        starts: Vec<f64>,
        proven: bool,
    },
    Infeasible,
    /// The time limit passed before the solver found any plan.
    NoSolution,
}

/// Builds and solves the MILP with the given no-overlap pairs, all times within `horizon`
/// (the SLO when there is one, with a little slack).
fn milp_round(
    p: &Problem,
    pairs: &BTreeSet<(usize, usize, usize)>,
    horizon: f64,
    remaining: f64,
    stats: &mut Stats,
) -> Result<Round, SolveError> {
    let n = p.steps.len();
    let (wl, we, wc) = weights(p);
    let mut vars = ProblemVariables::new();
    let x: Vec<Vec<Variable>> = p
        .steps
        .iter()
        .map(|s| vars.add_vector(variable().binary(), s.configs.len()))
        .collect();
    let z = vars.add_vector(variable().binary(), p.residencies.len());
    let t = vars.add_vector(variable().min(0.0).max(horizon), n);
    let m = vars.add(variable().min(0.0).max(horizon));
    let y: Vec<((usize, usize, usize), Variable)> = pairs
        .iter()
        .map(|&k| (k, vars.add(variable().binary())))
        .collect();
    stats.variables = x.iter().map(Vec::len).sum::<usize>() + z.len() + t.len() + 1 + y.len();

    // A total over the chosen configs and the loaded models, as a linear expression.
    let total = |config: fn(&crate::estimate::Config) -> f64,
                 load: fn(&crate::estimate::Residency) -> f64| {
        let steps: Expression = p
            .steps
            .iter()
            .enumerate()
            .flat_map(|(s, st)| {
                st.configs
                    .iter()
                    .enumerate()
                    .map(move |(c, cfg)| (s, c, config(cfg)))
            })
            .map(|(s, c, v)| v * x[s][c])
            .sum();
        let loads: Expression = p
            .residencies
            .iter()
            .enumerate()
            .map(|(r, res)| load(res) * z[r])
            .sum();
        steps + loads
    };
    let energy = total(|c| c.energy_j, |r| r.energy_j);
    let cost = total(|c| c.cost_usd, |r| r.cost_usd);
    let objective = wl * m + we * energy.clone() + wc * cost.clone();

    let mut model = vars.minimise(objective).using(highs);
    let mut constraints = 0usize;
    let dur = |s: usize| -> Expression {
        p.steps[s]
            .configs
            .iter()
            .enumerate()
            .map(|(c, cfg)| cfg.latency_s * x[s][c])
            .sum()
    };
    // Duration of step s if it runs on resource r (0 otherwise).
    let dur_on = |s: usize, r: usize| -> Expression {
        p.steps[s]
            .configs
            .iter()
            .enumerate()
            .filter(|(_, cfg)| cfg.resource == Some(r))
            .map(|(c, cfg)| cfg.latency_s * x[s][c])
            .sum()
    };
    let on = |s: usize, pick: &dyn Fn(&crate::estimate::Config) -> bool| -> Expression {
        p.steps[s]
            .configs
            .iter()
            .enumerate()
            .filter(|(_, cfg)| pick(cfg))
            .map(|(c, _)| Expression::from(x[s][c]))
            .sum()
    };

    for s in 0..n {
        model = model.with(constraint!(
            x[s].iter()
                .map(|&v| Expression::from(v))
                .sum::<Expression>()
                == 1.0
        ));
        model = model.with(constraint!(m - t[s] - dur(s) >= 0.0));
        for &d in &p.steps[s].preds {
            model = model.with(constraint!(t[s] - t[d] - dur(d) >= 0.0));
            constraints += 1;
        }
        for (c, cfg) in p.steps[s].configs.iter().enumerate() {
            if let Some(r) = cfg.residency {
                model = model.with(constraint!(z[r] - x[s][c] >= 0.0));
                constraints += 1;
            }
        }
        constraints += 2;
    }
    if let Some(e) = p.budget.energy_j {
        model = model.with(constraint!(energy.clone() <= e));
        constraints += 1;
    }
    if let Some(c) = p.budget.cost_usd {
        model = model.with(constraint!(cost.clone() <= c));
        constraints += 1;
    }
    for (r, res) in p.resources.iter().enumerate() {
        let on_r: Vec<usize> = (0..p.residencies.len())
            .filter(|&k| p.residencies[k].resource == r)
            .collect();
        let load: Expression = on_r.iter().map(|&k| p.residencies[k].load_s * z[k]).sum();
        if let Some(limit) = res.memory_gb
            && !on_r.is_empty()
        {
            let mem: Expression = on_r
                .iter()
                .map(|&k| p.residencies[k].memory_gb * z[k])
                .sum();
            model = model.with(constraint!(mem <= limit));
            constraints += 1;
        }
        if on_r.iter().any(|&k| p.residencies[k].load_s > 0.0) {
            for (s, &ts) in t.iter().enumerate() {
                let u = on(s, &|cfg| {
                    cfg.residency
                        .is_some_and(|k| p.residencies[k].resource == r)
                });
                if p.steps[s].configs.iter().any(|cfg| {
                    cfg.residency
                        .is_some_and(|k| p.residencies[k].resource == r)
                }) {
                    model = model.with(constraint!(ts - load.clone() - horizon * u >= -horizon));
                    constraints += 1;
                }
            }
        }
        if res.exclusive {
            let busy: Expression = (0..n).map(|s| dur_on(s, r)).sum::<Expression>() + load;
            model = model.with(constraint!(busy - m <= 0.0));
            constraints += 1;
        }
    }
    for &((i, j, r), yv) in &y {
        let ui = on(i, &|cfg| cfg.resource == Some(r));
        let uj = on(j, &|cfg| cfg.resource == Some(r));
        // y = 1: i before j; y = 0: j before i; relaxed unless both run on r.
        model = model.with(constraint!(
            t[j] - t[i] - dur_on(i, r)
                + horizon * (1.0 - yv)
                + horizon * (2.0 - ui.clone() - uj.clone())
                >= 0.0
        ));
        model = model.with(constraint!(
            t[i] - t[j] - dur_on(j, r) + horizon * yv + horizon * (2.0 - ui - uj) >= 0.0
        ));
        constraints += 2;
    }
    stats.constraints = constraints;

    // No MIP start: HiGHS 1.16 through good_lp returned the start's values instead of the
    // better solution it reported when presolve reduced the model to nothing, so a start
    // could silently replace the optimum. The heuristic is kept as the time-limit fallback.
    let model = model
        .set_time_limit(remaining)
        .set_mip_rel_gap(1e-9)
        .map_err(|e| SolveError::Solver(e.to_string()))?
        .set_mip_abs_gap(1e-10)
        .map_err(|e| SolveError::Solver(e.to_string()))?
        .set_threads(1);
    let solution = match model.solve() {
        Ok(s) => s,
        Err(good_lp::ResolutionError::Infeasible) => return Ok(Round::Infeasible),
        // The time limit passed before the solver found any plan of its own.
        Err(good_lp::ResolutionError::Other("NoSolutionFound")) => return Ok(Round::NoSolution),
        Err(e) => return Err(SolveError::Solver(e.to_string())),
    };
    // GapLimit is optimal within the 1e-9 relative gap set above.
    let proven = !matches!(solution.status(), good_lp::SolutionStatus::TimeLimit);
    let assignment: Vec<usize> = x
        .iter()
        .map(|xs| {
            (0..xs.len())
                .max_by(|&a, &b| solution.value(xs[a]).total_cmp(&solution.value(xs[b])))
                .unwrap_or(0)
        })
        .collect();
    let starts: Vec<f64> = t.iter().map(|&v| solution.value(v)).collect();
    Ok(Round::Solved {
        assignment,
        starts,
        proven,
    })
}

/// Whether totals beat the fallback plan known so far (or there is none).
fn improves(p: &Problem, known: &Option<(Vec<usize>, Schedule)>, totals: &Totals) -> bool {
    known.as_ref().is_none_or(|(a, sch)| {
        let (_, k) = evaluate(p, a, &sch.start);
        objective_value(p, totals) < objective_value(p, &k)
    })
}

fn finish_time_limit(
    p: &Problem,
    warm: Option<(Vec<usize>, Schedule)>,
    mut stats: Stats,
    started: Instant,
) -> Result<Solution, SolveError> {
    stats.solve_ms = started.elapsed().as_secs_f64() * 1e3;
    match warm {
        Some((assignment, schedule)) => {
            let (schedule, totals) = evaluate(p, &assignment, &schedule.start);
            Ok(Solution {
                objective_value: objective_value(p, &totals),
                assignment,
                schedule,
                totals,
                status: Status::TimeLimit,
                stats,
            })
        }
        None => Err(SolveError::Solver(
            "the time limit passed before any plan was found".into(),
        )),
    }
}

/// A fast feasible answer, used to warm-start the MILP and as its fallback when the time
/// limit passes before it finds a plan: start from each step's best config for the objective,
/// then, while the list schedule misses the SLO, move the step on the critical chain whose
/// faster config costs the least objective per second saved.
pub fn heuristic(p: &Problem, time_limit_s: f64) -> Option<(Vec<usize>, Schedule, Totals)> {
    let started = Instant::now();
    let repaired = repair(p, time_limit_s / 2.0);
    let descended = descent(p, time_limit_s - started.elapsed().as_secs_f64());
    [repaired, descended]
        .into_iter()
        .flatten()
        .min_by(|a, b| objective_value(p, &a.2).total_cmp(&objective_value(p, &b.2)))
}

/// The objective's own figure of one config.
fn key(p: &Problem, c: &crate::estimate::Config) -> f64 {
    match p.objective {
        Objective::Energy => c.energy_j,
        Objective::Cost => c.cost_usd,
        Objective::Latency => c.latency_s,
    }
}

/// From every step on its fastest config, one pass that moves each step (largest saving first)
/// to the cheapest config that keeps every budget: slower to improve than [`repair`] but it
/// finds a feasible plan whenever the all-fastest plan is one.
fn descent(p: &Problem, time_limit_s: f64) -> Option<(Vec<usize>, Schedule, Totals)> {
    let started = Instant::now();
    let order: Vec<f64> = (0..p.steps.len()).map(|i| i as f64).collect();
    let mut assignment: Vec<usize> = p
        .steps
        .iter()
        .map(|s| {
            (0..s.configs.len())
                .min_by(|&a, &b| s.configs[a].latency_s.total_cmp(&s.configs[b].latency_s))
                .unwrap_or(0)
        })
        .collect();
    let ok = |a: &[usize]| {
        fits_memory(p, a) && budget_violations(&p.budget, &evaluate(p, a, &order).1).is_empty()
    };
    if !ok(&assignment) {
        return None;
    }
    let mut steps: Vec<usize> = (0..p.steps.len()).collect();
    let saving = |i: usize, a: &[usize]| {
        let cur = key(p, &p.steps[i].configs[a[i]]);
        cur - p.steps[i]
            .configs
            .iter()
            .map(|c| key(p, c))
            .fold(f64::INFINITY, f64::min)
    };
    steps.sort_by(|&a, &b| saving(b, &assignment).total_cmp(&saving(a, &assignment)));
    for i in steps {
        if started.elapsed().as_secs_f64() > time_limit_s {
            break;
        }
        let mut options: Vec<usize> = (0..p.steps[i].configs.len()).collect();
        options.sort_by(|&a, &b| {
            key(p, &p.steps[i].configs[a]).total_cmp(&key(p, &p.steps[i].configs[b]))
        });
        for c in options {
            if key(p, &p.steps[i].configs[c]) >= key(p, &p.steps[i].configs[assignment[i]]) {
                break;
            }
            let mut trial = assignment.clone();
            trial[i] = c;
            if ok(&trial) {
                assignment = trial;
                break;
            }
        }
    }
    let (schedule, totals) = evaluate(p, &assignment, &order);
    Some((assignment, schedule, totals))
}

/// From every step on its cheapest config, move critical-chain steps to faster configs until
/// the SLO holds.
fn repair(p: &Problem, time_limit_s: f64) -> Option<(Vec<usize>, Schedule, Totals)> {
    let started = Instant::now();
    let key = |c: &crate::estimate::Config| match p.objective {
        Objective::Energy => c.energy_j,
        Objective::Cost => c.cost_usd,
        Objective::Latency => c.latency_s,
    };
    let mut assignment: Vec<usize> = p
        .steps
        .iter()
        .map(|s| {
            (0..s.configs.len())
                .min_by(|&a, &b| key(&s.configs[a]).total_cmp(&key(&s.configs[b])))
                .unwrap_or(0)
        })
        .collect();
    if !fits_memory(p, &assignment) {
        return None;
    }
    let order: Vec<f64> = (0..p.steps.len()).map(|i| i as f64).collect();
    let limit = p.steps.iter().map(|s| s.configs.len()).sum::<usize>() + 1;
    for _ in 0..limit {
        if started.elapsed().as_secs_f64() > time_limit_s {
            return None;
        }
        let (schedule, totals, blocker) = evaluate_traced(p, &assignment, &order);
        if budget_violations(&p.budget, &totals).is_empty() {
            return Some((assignment, schedule, totals));
        }
        let slo = p.budget.latency_s?;
        if totals.latency_s <= slo {
            return None; // an energy or cost budget is broken: no cheap repair
        }
        // The critical chain: back from the last step along what held each one up.
        let mut critical = vec![false; p.steps.len()];
        let mut cursor =
            (0..p.steps.len()).max_by(|&a, &b| schedule.end[a].total_cmp(&schedule.end[b]));
        while let Some(i) = cursor {
            critical[i] = true;
            cursor = blocker[i];
        }
        // Try every other config of every step on the chain, list-scheduled for real (a
        // "faster" config can be slower once its device is contended), and take the move that
        // shortens the run at the least objective per second saved.
        let mut best: Option<(f64, usize, usize)> = None;
        for (i, step) in p.steps.iter().enumerate().filter(|(i, _)| critical[*i]) {
            let cur = &step.configs[assignment[i]];
            for (c, cfg) in step.configs.iter().enumerate() {
                if c == assignment[i] {
                    continue;
                }
                let mut trial = assignment.clone();
                trial[i] = c;
                if !fits_memory(p, &trial) {
                    continue;
                }
                let (_, t) = evaluate(p, &trial, &order);
                let saved = totals.latency_s - t.latency_s;
                if saved <= TOLERANCE * (1.0 + totals.latency_s) {
                    continue;
                }
                let ratio = (key(cfg) - key(cur)) / saved;
                if best.is_none_or(|b| ratio < b.0) {
                    best = Some((ratio, i, c));
                }
            }
            if started.elapsed().as_secs_f64() > time_limit_s {
                return None;
            }
        }
        let (_, i, c) = best?;
        assignment[i] = c;
    }
    None
}

/// The baselines joule is compared against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Baseline {
    /// Every llm step on the single best-quality model, on its fastest device: what a
    /// hand-tuned application does.
    Static,
    /// Each step alone on its cheapest config (by the objective) that meets its quality floor.
    Greedy,
}

/// A baseline's assignment, scheduled in DAG order.
pub fn baseline(p: &Problem, which: Baseline) -> Result<Solution, SolveError> {
    let started = Instant::now();
    if let Some(step) = p.steps.iter().find(|s| s.configs.is_empty()) {
        return Err(SolveError::NoConfig {
            step: step.id.clone(),
            reasons: step.excluded.clone(),
        });
    }
    let assignment: Vec<usize> = match which {
        Baseline::Static => {
            // The model with the best mean quality over the steps that can use it.
            let mut models: Vec<(&str, f64, usize)> = Vec::new();
            for step in &p.steps {
                for c in &step.configs {
                    if let (Some(m), Some(q)) = (&c.model, c.quality) {
                        match models.iter_mut().find(|(id, _, _)| id == m) {
                            Some(e) => {
                                e.1 += q;
                                e.2 += 1;
                            }
                            None => models.push((m, q, 1)),
                        }
                    }
                }
            }
            let best = models
                .iter()
                .max_by(|a, b| {
                    (a.1 / a.2 as f64)
                        .total_cmp(&(b.1 / b.2 as f64))
                        .then(b.0.cmp(a.0))
                })
                .map(|m| m.0.to_string());
            p.steps
                .iter()
                .map(|s| {
                    let fastest = |pick: &dyn Fn(&crate::estimate::Config) -> bool| {
                        (0..s.configs.len())
                            .filter(|&c| pick(&s.configs[c]))
                            .min_by(|&a, &b| {
                                s.configs[a].latency_s.total_cmp(&s.configs[b].latency_s)
                            })
                    };
                    fastest(&|c| c.model == best)
                        .or_else(|| {
                            // The step cannot use that model: its own best-quality one.
                            let q = s
                                .configs
                                .iter()
                                .filter_map(|c| c.quality)
                                .fold(f64::NEG_INFINITY, f64::max);
                            fastest(&|c| c.quality.is_none_or(|x| x >= q))
                        })
                        .unwrap_or(0)
                })
                .collect()
        }
        Baseline::Greedy => {
            let key = |c: &crate::estimate::Config| match p.objective {
                Objective::Energy => c.energy_j,
                Objective::Cost => c.cost_usd,
                Objective::Latency => c.latency_s,
            };
            p.steps
                .iter()
                .map(|s| {
                    (0..s.configs.len())
                        .min_by(|&a, &b| key(&s.configs[a]).total_cmp(&key(&s.configs[b])))
                        .unwrap_or(0)
                })
                .collect()
        }
    };
    let order: Vec<f64> = (0..p.steps.len()).map(|i| i as f64).collect();
    let (schedule, totals) = evaluate(p, &assignment, &order);
    Ok(Solution {
        objective_value: objective_value(p, &totals),
        assignment,
        schedule,
        totals,
        status: Status::Heuristic,
        stats: Stats {
            solver: format!("{which:?}").to_lowercase(),
            solve_ms: started.elapsed().as_secs_f64() * 1e3,
            ..Stats::default()
        },
    })
}

/// The reference solver for tests: every assignment, and for each every order of the steps
/// sharing a one-at-a-time device. Exponential; only for a handful of steps.
pub fn exhaustive(p: &Problem) -> Option<Solution> {
    let n = p.steps.len();
    if p.steps.iter().any(|s| s.configs.is_empty()) {
        return None;
    }
    let mut best: Option<Solution> = None;
    let mut assignment = vec![0usize; n];
    loop {
        if !fits_memory(p, &assignment) {
            // Skip: the models it needs do not fit on their devices together.
        } else if let Some((schedule, totals)) = best_schedule(p, &assignment)
            && budget_violations(&p.budget, &totals).is_empty()
        {
            let value = objective_value(p, &totals);
            if best.as_ref().is_none_or(|b| value < b.objective_value) {
                best = Some(Solution {
                    assignment: assignment.clone(),
                    schedule,
                    totals,
                    objective_value: value,
                    status: Status::Optimal,
                    stats: Stats {
                        solver: "exhaustive".into(),
                        ..Stats::default()
                    },
                });
            }
        }
        // Next assignment, odometer style.
        let mut k = 0;
        loop {
            if k == n {
                return best;
            }
            assignment[k] += 1;
            if assignment[k] < p.steps[k].configs.len() {
                break;
            }
            assignment[k] = 0;
            k += 1;
        }
    }
}

/// Whether the models an assignment loads fit in each device's memory together.
fn fits_memory(p: &Problem, assignment: &[usize]) -> bool {
    let used = used_residencies(p, assignment);
    p.resources.iter().enumerate().all(|(r, res)| {
        res.memory_gb.is_none_or(|limit| {
            let mem: f64 = used
                .iter()
                .filter(|&&k| p.residencies[k].resource == r)
                .map(|&k| p.residencies[k].memory_gb)
                .sum();
            mem <= limit + TOLERANCE * (1.0 + limit)
        })
    })
}

/// The shortest schedule of an assignment, over every order of the steps on each exclusive
/// resource (every semi-active schedule is a list schedule of some priority order, so trying
/// every precedence-respecting priority order finds the optimum).
fn best_schedule(p: &Problem, assignment: &[usize]) -> Option<(Schedule, Totals)> {
    let n = p.steps.len();
    let mut best: Option<(Schedule, Totals)> = None;
    let mut order = Vec::with_capacity(n);
    let mut placed = vec![false; n];
    fn extend(
        p: &Problem,
        assignment: &[usize],
        order: &mut Vec<usize>,
        placed: &mut [bool],
        best: &mut Option<(Schedule, Totals)>,
    ) {
        let n = p.steps.len();
        if order.len() == n {
            let mut priority = vec![0.0; n];
            for (rank, &i) in order.iter().enumerate() {
                priority[i] = rank as f64;
            }
            let (s, t) = evaluate(p, assignment, &priority);
            if best
                .as_ref()
                .is_none_or(|b| t.latency_s < b.1.latency_s - 1e-12)
            {
                *best = Some((s, t));
            }
            return;
        }
        for i in 0..n {
            if !placed[i] && p.steps[i].preds.iter().all(|&d| placed[d]) {
                placed[i] = true;
                order.push(i);
                extend(p, assignment, order, placed, best);
                order.pop();
                placed[i] = false;
            }
        }
    }
    extend(p, assignment, &mut order, &mut placed, &mut best);
    best
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
