//! The MILP against an exhaustive search on hundreds of random small instances (up to 8 steps
//! and 6 configs each, parallel branches sharing one-at-a-time devices, model loads, memory
//! limits and budgets, the quality tolerance among them): same optimum, every plan passes the independent check, and neither
//! baseline ever beats it.

use joule_planner::estimate::{Config, Problem, Residency, Resource, StepChoices};
use joule_planner::figure::Source;
use joule_planner::solve::{self, Options, Status, Strategy as Placement};
use joule_planner::spec::{Budget, Objective};
use proptest::prelude::*;

/// (model, resource, latency, energy, cost) of one config.
type RawConfig = (usize, usize, u32, u32, u32);

#[derive(Debug, Clone)]
struct Raw {
    /// Per step: predecessors, configs.
    steps: Vec<(Vec<usize>, Vec<RawConfig>)>,
    loads: Vec<(u32, u32)>,
    objective: u8,
    budget: (u8, u32),
}

/// 3 models x {cpu (exclusive), gpu (exclusive, 4 GB), endpoint (shared)}.
fn problem(raw: &Raw) -> Problem {
    let resources = vec![
        Resource {
            name: "cpu".into(),
            exclusive: true,
            memory_gb: Some(16.0),
        },
        Resource {
            name: "cuda:0".into(),
            exclusive: true,
            memory_gb: Some(4.0),
        },
        Resource {
            name: "endpoint".into(),
            exclusive: false,
            memory_gb: None,
        },
    ];
    let mut residencies = Vec::new();
    for m in 0..3 {
        for r in 0..2 {
            let (load, mem) = raw.loads[m * 2 + r];
            residencies.push(Residency {
                model: format!("m{m}"),
                resource: r,
                load_s: f64::from(load) / 4.0,
                energy_j: f64::from(load) * 10.0,
                cost_usd: f64::from(load) * 1e-4,
                memory_gb: 0.5 + f64::from(mem),
            });
        }
    }
    let steps = raw
        .steps
        .iter()
        .enumerate()
        .map(|(i, (preds, configs))| StepChoices {
            id: format!("s{i}"),
            preds: preds.iter().copied().filter(|&p| p < i).collect(),
            excluded: Vec::new(),
            configs: configs
                .iter()
                .map(|&(m, r, lat, energy, cost)| Config {
                    model: Some(format!("m{m}")),
                    device: resources[r].name.clone(),
                    resource: Some(r).filter(|&r| resources[r].exclusive),
                    residency: (r < 2).then_some(m * 2 + r),
                    latency_s: 0.5 + f64::from(lat),
                    energy_j: f64::from(energy),
                    cost_usd: f64::from(cost) * 1e-3,
                    quality: Some(0.5),
                    // Model 0 is every step's reference; larger ids lose more quality.
                    loss: Some(0.05 * m as f64),
                    basis: None,
                    calls: 1,
                    tokens_in: 10.0,
                    tokens_out: 10.0,
                    tokens_learned: 0,
                    source: Source::Estimate,
                })
                .collect(),
        })
        .collect();
    let objective =
        [Objective::Energy, Objective::Cost, Objective::Latency][raw.objective as usize % 3];
    let mut budget = Budget::default();
    match raw.budget.0 % 5 {
        0 => {}
        4 => budget.quality_loss = Some(f64::from(raw.budget.1 % 10) * 0.02),
        1 => budget.latency_s = Some(2.0 + f64::from(raw.budget.1 % 20)),
        2 => budget.energy_j = Some(f64::from(raw.budget.1 % 200)),
        _ => {
            budget.latency_s = Some(3.0 + f64::from(raw.budget.1 % 15));
            budget.cost_usd = Some(f64::from(raw.budget.1 % 40) * 1e-3);
        }
    }
    Problem {
        steps,
        resources,
        residencies,
        budget,
        objective,
    }
}

fn raw() -> impl Strategy<Value = Raw> {
    let step = (
        proptest::collection::vec(0usize..8, 0..3),
        proptest::collection::btree_map(
            (0usize..3, 0usize..3),
            (0u32..6, 0u32..60, 0u32..10),
            1..=6,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|((a, b), (c, d, e))| (a, b, c, d, e))
                .collect::<Vec<_>>()
        }),
    );
    (
        proptest::collection::vec(step, 1..=8),
        proptest::collection::vec((0u32..8, 0u32..4), 6),
        any::<u8>(),
        (any::<u8>(), any::<u32>()),
    )
        .prop_map(|(steps, loads, objective, budget)| Raw {
            steps,
            loads,
            objective,
            budget,
        })
}

/// Work the exhaustive search does: assignments times orders (bounded by n!).
fn work(p: &Problem) -> f64 {
    let assignments: f64 = p.steps.iter().map(|s| s.configs.len() as f64).product();
    let orders: f64 = (1..=p.steps.len()).map(|k| k as f64).product();
    assignments * orders
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, max_global_rejects: 100_000, ..ProptestConfig::default() })]

    #[test]
    fn milp_matches_exhaustive_search(raw in raw()) {
        let p = problem(&raw);
        prop_assume!(work(&p) <= 400_000.0);
        let milp = solve::solve(&p, &Options::default()).expect("the solver runs");
        let brute = solve::exhaustive(&p);
        match (&brute, milp.status) {
            (None, Status::Infeasible) => {}
            (None, s) => prop_assert!(false, "exhaustive found nothing, MILP says {s:?}: {:?}", milp.totals),
            (Some(b), Status::Optimal) => {
                // The primary objective is exact; the tie-breakers (weighted 1e-5) are best
                // effort when latency is not the objective.
                let (pm, pb) = (solve::primary(&p, &milp.totals), solve::primary(&p, &b.totals));
                prop_assert!(
                    (pm - pb).abs() <= 1e-6 * (1.0 + pb.abs()),
                    "MILP primary {} vs exhaustive {} ({:?} vs {:?})", pm, pb, milp.totals, b.totals
                );
                let tol = 2e-5 * (1.0 + b.objective_value.abs());
                prop_assert!(
                    milp.objective_value >= b.objective_value - 1e-9 && milp.objective_value - b.objective_value <= tol,
                    "MILP {} vs exhaustive {} ({:?} vs {:?})", milp.objective_value, b.objective_value, milp.totals, b.totals
                );
                let violations = solve::check(&p, &milp);
                prop_assert!(violations.is_empty(), "{violations:?}");
                for which in [Placement::Static, Placement::Greedy] {
                    let base = solve::place(&p, which, &Options::default()).unwrap();
                    if solve::check(&p, &base).is_empty() {
                        prop_assert!(solve::primary(&p, &base.totals) >= pm - 1e-6 * (1.0 + pm.abs()), "{which:?} beat the MILP");
                    }
                }
            }
            (Some(_), s) => prop_assert!(false, "exhaustive found a plan, MILP says {s:?}"),
        }
    }
}

#[test]
fn regression_warm_start_with_two_loads() {
    let raw = Raw {
        steps: vec![
            (
                vec![],
                vec![(0, 0, 0, 19, 0), (0, 1, 3, 18, 4), (0, 2, 0, 18, 0)],
            ),
            (vec![], vec![(0, 0, 3, 0, 0), (0, 1, 0, 0, 0)]),
        ],
        loads: vec![(2, 0), (3, 0), (0, 0), (0, 0), (0, 0), (0, 0)],
        objective: 0,
        budget: (2, 68),
    };
    let p = problem(&raw);
    let milp = solve::solve(&p, &Options::default()).unwrap();
    let brute = solve::exhaustive(&p).unwrap();
    assert_eq!(
        milp.totals.energy_j, brute.totals.energy_j,
        "{:?} vs {:?}",
        milp.assignment, brute.assignment
    );
}

#[test]
fn time_limit_still_gives_a_checked_plan_when_the_slo_binds() {
    // 300 steps on two one-at-a-time devices with a binding SLO: optimality cannot be proven in
    // a second, but the heuristics' plan must come back, feasible and checked.
    let p = joule_planner::synth::problem(300, 10, 11, Some(3.0));
    let s = solve::solve(&p, &Options { time_limit_s: 1.0 }).expect("a plan within the time limit");
    assert!(
        matches!(s.status, Status::TimeLimit | Status::Optimal),
        "{:?}",
        s.status
    );
    let violations = solve::check(&p, &s);
    assert!(violations.is_empty(), "{violations:?}");
}
