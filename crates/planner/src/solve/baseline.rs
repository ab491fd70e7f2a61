//! The baselines joule is compared against: what a hand-tuned application does (`static`) and
//! each step alone on its cheapest config (`greedy`).

use std::time::Instant;

use super::{
    Objective, Problem, Solution, SolveError, Stats, Status, Strategy, evaluate, objective_value,
};

/// A baseline's assignment, scheduled in DAG order.
pub(super) fn baseline(p: &Problem, which: Strategy) -> Result<Solution, SolveError> {
    let started = Instant::now();
    if let Some(step) = p.steps.iter().find(|s| s.configs.is_empty()) {
        return Err(SolveError::NoConfig {
            step: step.id.clone(),
            reasons: step.excluded.clone(),
        });
    }
    let assignment = if which == Strategy::Static {
        static_assignment(p)
    } else {
        greedy_assignment(p)
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
            solver: which.as_str().to_string(),
            solve_ms: started.elapsed().as_secs_f64() * 1e3,
            ..Stats::default()
        },
    })
}

/// Every llm step on its reference model (the best-quality one it may use, which the
/// quality losses are measured against), on its fastest device. Steps with no reference
/// (no quality basis at all) take the model with the best mean quality over the steps that
/// can use it. Step-level scores alone do not pick the model: where a tune measured a
/// smaller model as a tie, a hand-tuned application would still run the big one, and the
/// baseline must not borrow joule's measurements.
fn static_assignment(p: &Problem) -> Vec<usize> {
    let by_model = static_by_model(p);
    p.steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (0..s.configs.len())
                .filter(|&c| {
                    s.configs[c]
                        .basis
                        .as_ref()
                        .is_some_and(|b| b.level == crate::quality::Level::Reference)
                })
                .min_by(|&a, &b| s.configs[a].latency_s.total_cmp(&s.configs[b].latency_s))
                .unwrap_or(by_model[i])
        })
        .collect()
}

/// Every llm step on the model with the best mean quality over the steps that can use it,
/// on its fastest device.
fn static_by_model(p: &Problem) -> Vec<usize> {
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
                    .min_by(|&a, &b| s.configs[a].latency_s.total_cmp(&s.configs[b].latency_s))
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

/// Each step on its cheapest config by the objective.
fn greedy_assignment(p: &Problem) -> Vec<usize> {
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
