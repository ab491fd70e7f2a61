//! List scheduling: the schedule and totals of an assignment, recomputed from the problem's
//! own figures so the solver's answer is never trusted as is.

use std::collections::BTreeSet;

use super::{Problem, Schedule, Totals};

/// Residencies used by an assignment.
pub(super) fn used_residencies(p: &Problem, assignment: &[usize]) -> BTreeSet<usize> {
    assignment
        .iter()
        .enumerate()
        .filter_map(|(s, &c)| p.steps[s].configs[c].residency)
        .collect()
}

/// When each resource's model loads are done (loads run back to back from time zero).
pub(super) fn load_done(p: &Problem, used: &BTreeSet<usize>) -> Vec<f64> {
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
pub(super) fn evaluate_traced(
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
        totals.quality_loss += config.loss.unwrap_or(0.0);
    }
    for &r in &used {
        totals.energy_j += p.residencies[r].energy_j;
        totals.cost_usd += p.residencies[r].cost_usd;
    }
    (schedule, totals, blocker)
}
