//! The placement MILP, solved with HiGHS, with no-overlap pairs added lazily round by round.

use std::collections::BTreeSet;
use std::time::Instant;

use good_lp::{
    Expression, ProblemVariables, Solution as _, SolverModel, Variable, constraint, highs, variable,
};

use super::{
    Objective, Options, Problem, Schedule, Solution, SolveError, Stats, Status, TOLERANCE, Totals,
    budget_violations, evaluate, heuristic, objective_value, reachability, scales, weights,
};

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
    if let Some(q) = p.budget.quality_loss {
        let loss: Expression = p
            .steps
            .iter()
            .enumerate()
            .flat_map(|(s, step)| {
                step.configs
                    .iter()
                    .enumerate()
                    .map(move |(c, cfg)| (s, c, cfg.loss.unwrap_or(0.0)))
            })
            .filter(|&(_, _, l)| l > 0.0)
            .map(|(s, c, l)| l * x[s][c])
            .sum();
        model = model.with(constraint!(loss <= q));
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
