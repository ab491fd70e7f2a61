//! The independent check of a solution against every constraint of the problem.

use super::{Budget, Problem, Solution, TOLERANCE, Totals, evaluate, load_done, used_residencies};

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
    if over(b.quality_loss, t.quality_loss) {
        v.push(format!(
            "a predicted quality loss of {:.3} exceeds the tolerance of {:.3}",
            t.quality_loss,
            b.quality_loss.unwrap_or(0.0)
        ));
    }
    v
}

/// Pairs of steps ordered by the DAG (one reaches the other), as a reachability matrix.
pub(super) fn reachability(p: &Problem) -> Vec<Vec<bool>> {
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
