//! How long the planner's MILP takes on generated DAGs with 6 configs per step (3 model sizes x
//! a slow frugal CPU and a fast power-hungry GPU, both one step at a time), layers of 10 steps.
//! Targets (issue 3): median under 100 ms at 100 steps and under 5 s at 1,000.
//!
//! Two regimes: no SLO (the optimum is proven in one MILP round), and an SLO at 3x the
//! makespan lower bound, which binds, so the exact no-overlap rounds run. The binding case is
//! measured at 10 steps only: at 100 it reaches the solver's time limit (see BENCHMARKS.md).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use joule_planner::solve::{self, Options, Status};
use joule_planner::synth;

fn solve_time(c: &mut Criterion) {
    let mut group = c.benchmark_group("solve");
    group.sample_size(10);
    let opts = Options { time_limit_s: 30.0 };
    let cases = [
        ("no_slo", 10usize, None),
        ("no_slo", 100, None),
        ("no_slo", 500, None),
        ("no_slo", 1_000, None),
        ("slo_3x", 10, Some(3.0)),
    ];
    for (name, steps, slo) in cases {
        let problem = synth::problem(steps, 10, 11, slo);
        group.bench_with_input(BenchmarkId::new(name, steps), &problem, |b, p| {
            b.iter(|| {
                let s = solve::solve(p, &opts).expect("solves");
                assert_eq!(s.status, Status::Optimal);
                s
            })
        });
    }
    group.finish();
}

criterion_group!(benches, solve_time);
criterion_main!(benches);
