//! Times one solve of a synthetic problem: `cargo run --release -p joule-planner --example
//! solve_time -- STEPS [SLO_FACTOR]`. Prints status, rounds, pairs and milliseconds.

fn main() {
    let mut args = std::env::args().skip(1);
    let steps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let slo: Option<f64> = args.next().and_then(|a| a.parse().ok());
    let p = joule_planner::synth::problem(steps, 10, 11, slo);
    let opts = joule_planner::solve::Options { time_limit_s: 5.0 };
    let s = joule_planner::solve::solve(&p, &opts).expect("solves");
    let violations = joule_planner::solve::check(&p, &s);
    println!(
        "steps {steps} slo {:?}: {:?} in {:.1} ms, {} rounds, {} pairs, {} vars, latency {:.1}s energy {:.0}J, check {}",
        p.budget.latency_s,
        s.status,
        s.stats.solve_ms,
        s.stats.rounds,
        s.stats.overlap_pairs,
        s.stats.variables,
        s.totals.latency_s,
        s.totals.energy_j,
        if violations.is_empty() {
            "ok".to_string()
        } else {
            format!("{violations:?}")
        }
    );
}
