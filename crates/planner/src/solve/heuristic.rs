//! A fast feasible answer: the MILP's warm start, and its fallback when the time limit passes.

use std::time::Instant;

use super::{
    Objective, Problem, Schedule, TOLERANCE, Totals, budget_violations, evaluate, evaluate_traced,
    fits_memory, objective_value,
};

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
