//! The latency / energy / cost trade-off of a workflow: plans at a sweep of SLOs from the
//! fastest possible run to the SLO at which the objective stops improving, so an operator can
//! see what each second of latency costs in joules and dollars.

use std::fmt::Write;

use serde::Serialize;

use crate::estimate::Problem;
use crate::solve::{self, Options, Status};
use crate::spec::Objective;

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub slo_s: f64,
    pub feasible: bool,
    pub latency_s: f64,
    pub energy_j: f64,
    pub cost_usd: f64,
}

/// Plans at `points` SLOs between the fastest run and the unconstrained optimum's latency.
pub fn sweep(p: &Problem, points: usize, opts: &Options) -> Result<Vec<Point>, solve::SolveError> {
    let with = |objective: Objective, slo: Option<f64>| {
        let mut q = p.clone();
        q.objective = objective;
        q.budget.latency_s = slo;
        solve::solve(&q, opts)
    };
    let fastest = with(Objective::Latency, None)?;
    let free = with(p.objective, None)?;
    if fastest.status == Status::Infeasible || free.status == Status::Infeasible {
        return Ok(Vec::new());
    }
    let (lo, hi) = (
        fastest.totals.latency_s,
        free.totals.latency_s.max(fastest.totals.latency_s),
    );
    let points = points.max(2);
    let mut out = Vec::with_capacity(points);
    for k in 0..points {
        let slo = lo + (hi - lo) * k as f64 / (points - 1) as f64;
        // The first point is exactly the fastest run; give it the solver's tolerance.
        let slo = if k == 0 {
            slo * (1.0 + 1e-9) + 1e-9
        } else {
            slo
        };
        let s = with(p.objective, Some(slo))?;
        out.push(Point {
            slo_s: slo,
            feasible: s.status != Status::Infeasible,
            latency_s: s.totals.latency_s,
            energy_j: s.totals.energy_j,
            cost_usd: s.totals.cost_usd,
        });
    }
    Ok(out)
}

pub fn csv(points: &[Point]) -> String {
    let mut out = String::from("slo_s,feasible,latency_s,energy_j,cost_usd\n");
    for p in points {
        let _ = writeln!(
            out,
            "{:.6},{},{:.6},{:.6},{:.9}",
            p.slo_s, p.feasible, p.latency_s, p.energy_j, p.cost_usd
        );
    }
    out
}
