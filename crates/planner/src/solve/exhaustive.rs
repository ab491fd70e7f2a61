//! The reference solver for tests: every assignment and every order. Exponential.

use super::{
    Problem, Schedule, Solution, Stats, Status, TOLERANCE, Totals, budget_violations, evaluate,
    objective_value, used_residencies,
};

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
pub(super) fn fits_memory(p: &Problem, assignment: &[usize]) -> bool {
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
