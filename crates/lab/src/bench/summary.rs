//! What a benchmark found, per workflow and policy and for the suite as a whole: the figures a
//! reader compares (latency, SLO attainment, energy and cost per request, quality) and the
//! ratios that say what planning saved against the baselines.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use joule_executor::runtime::RunStatus;
use joule_executor::runtime::event::weakest;
use joule_planner::figure::Meter;
#[cfg(test)]
use joule_planner::plan::Method;

use super::{Mode, Row, Strategy};

/// The rows of one (mode, workflow, tier, policy), reduced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Group {
    pub mode: Mode,
    /// The workflow, or `suite` for all of them together.
    pub workflow: String,
    pub tier: String,
    pub policy: Strategy,
    pub requests: usize,
    pub failed: usize,
    pub mean_latency_s: f64,
    pub p95_latency_s: f64,
    /// Fraction of requests that finished within the SLO.
    pub slo_attainment: f64,
    pub energy_j_per_request: f64,
    /// The weakest method among the rows' energy figures.
    /// The weakest method among the group's figures (`None`: nothing was metered).
    pub energy_method: Option<Meter>,
    pub usd_per_request: f64,
    pub mean_quality: f64,
    /// The models the plans used, `;`-separated.
    pub models: String,
}

/// The nearest-rank percentile of unsorted values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn reduce(mode: Mode, workflow: &str, tier: &str, policy: Strategy, rows: &[&Row]) -> Group {
    let n = rows.len().max(1) as f64;
    let latencies: Vec<f64> = rows.iter().map(|r| r.latency_s).collect();
    let energy_method = rows.iter().fold(None, |m, r| weakest(m, r.energy_method));
    let mut models: Vec<&str> = rows
        .iter()
        .flat_map(|r| r.models.split(';'))
        .filter(|m| !m.is_empty())
        .collect();
    models.sort_unstable();
    models.dedup();
    Group {
        mode,
        workflow: workflow.to_string(),
        tier: tier.to_string(),
        policy,
        requests: rows.len(),
        failed: rows
            .iter()
            .filter(|r| r.status != RunStatus::Succeeded)
            .count(),
        mean_latency_s: latencies.iter().sum::<f64>() / n,
        p95_latency_s: percentile(&latencies, 95.0),
        slo_attainment: rows.iter().filter(|r| r.slo_met).count() as f64 / n,
        energy_j_per_request: rows.iter().map(|r| r.energy_j).sum::<f64>() / n,
        energy_method,
        usd_per_request: rows.iter().map(|r| r.cost_usd).sum::<f64>() / n,
        mean_quality: rows.iter().map(|r| r.quality).sum::<f64>() / n,
        models: models.join(";"),
    }
}

/// One group per (mode, workflow, tier, policy), then one per (mode, tier, policy) for the
/// whole suite (workflow `suite`), in that order.
pub fn groups(rows: &[Row]) -> Vec<Group> {
    let mut by: BTreeMap<(Mode, &str, &str, Strategy), Vec<&Row>> = BTreeMap::new();
    let mut suite: BTreeMap<(Mode, &str, Strategy), Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by.entry((r.mode, &r.workflow, &r.tier, r.policy))
            .or_default()
            .push(r);
        suite
            .entry((r.mode, &r.tier, r.policy))
            .or_default()
            .push(r);
    }
    let mut out: Vec<Group> = by
        .iter()
        .map(|((m, w, t, p), rs)| reduce(*m, w, t, *p, rs))
        .collect();
    out.extend(
        suite
            .iter()
            .map(|((m, t, p), rs)| reduce(*m, SUITE, t, *p, rs)),
    );
    out
}

/// The workflow name of the whole-suite groups.
pub const SUITE: &str = "suite";

/// `a / b`, or `None` when `b` is not positive.
fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r > 0.0 && r < 1.0 => format!("{r:.2} ({:.2}x less)", 1.0 / r),
        Some(r) => format!("{r:.2}"),
        None => "-".into(),
    }
}

/// joule's figure over a baseline's for the same (mode, workflow, tier).
pub fn versus(groups: &[Group], of: &Group, baseline: Strategy) -> Option<(f64, f64)> {
    let b = groups.iter().find(|g| {
        g.mode == of.mode && g.workflow == of.workflow && g.tier == of.tier && g.policy == baseline
    })?;
    Some((
        ratio(of.energy_j_per_request, b.energy_j_per_request)?,
        ratio(of.usd_per_request, b.usd_per_request).unwrap_or(f64::NAN),
    ))
}

/// `summary.md`: a table per mode, then the ratios of joule to each baseline.
/// `notes` say how each mode's rows were obtained (the command, the machine, the loads).
pub fn markdown(suite: &str, groups: &[Group], notes: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmark `{suite}`\n");
    for n in notes {
        let _ = writeln!(out, "- {n}");
    }
    if !notes.is_empty() {
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "Energy is per request, with how it was obtained (`nvml`, `rapl`: measured by the \
         device's counter; `estimate`: profiled power x measured time, or for simulated rows a \
         prediction from the profiles alone). Quality is the suite's score of the scored output \
         (0..1); for simulated rows, the lowest profiled quality of the models that shaped it.\n"
    );
    for mode in [Mode::Real, Mode::Simulated] {
        let of_mode: Vec<&Group> = groups.iter().filter(|g| g.mode == mode).collect();
        if of_mode.is_empty() {
            continue;
        }
        let _ = writeln!(out, "## {}\n", mode.as_str());
        let _ = writeln!(
            out,
            "| workflow | tier | policy | n | failed | mean latency | p95 latency | SLO met | J/request | energy method | USD/request | quality | models |"
        );
        let _ = writeln!(
            out,
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |"
        );
        for g in &of_mode {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.2} s | {:.2} s | {:.0}% | {:.1} | {} | {:.6} | {:.3} | {} |",
                g.workflow,
                g.tier,
                g.policy.as_str(),
                g.requests,
                g.failed,
                g.mean_latency_s,
                g.p95_latency_s,
                g.slo_attainment * 100.0,
                g.energy_j_per_request,
                g.energy_method.map_or("none", Meter::as_str),
                g.usd_per_request,
                g.mean_quality,
                g.models
            );
        }
        let _ = writeln!(
            out,
            "\n### joule against the baselines ({})\n\n| workflow | tier | energy joule/static | energy joule/greedy | cost joule/static | SLO met joule / static | quality joule / static |\n| --- | --- | --- | --- | --- | --- | --- |",
            mode.as_str()
        );
        for g in of_mode.iter().filter(|g| g.policy == Strategy::Joule) {
            let s = versus(groups, g, Strategy::Static);
            let gr = versus(groups, g, Strategy::Greedy);
            let st = groups.iter().find(|b| {
                b.mode == g.mode
                    && b.workflow == g.workflow
                    && b.tier == g.tier
                    && b.policy == Strategy::Static
            });
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                g.workflow,
                g.tier,
                fmt_ratio(s.map(|x| x.0)),
                fmt_ratio(gr.map(|x| x.0)),
                fmt_ratio(s.map(|x| x.1).filter(|c| c.is_finite())),
                st.map_or("-".into(), |b| format!(
                    "{:.0}% / {:.0}%",
                    g.slo_attainment * 100.0,
                    b.slo_attainment * 100.0
                )),
                st.map_or("-".into(), |b| format!(
                    "{:.3} / {:.3}",
                    g.mean_quality, b.mean_quality
                )),
            );
        }
        let _ = writeln!(out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(workflow: &str, policy: Strategy, latency: f64, energy: f64, ok: bool) -> Row {
        Row {
            mode: Mode::Real,
            workflow: workflow.into(),
            tier: "standard".into(),
            slo_s: 10.0,
            policy,
            request: 0,
            input: "x".into(),
            run_id: String::new(),
            status: if ok {
                RunStatus::Succeeded
            } else {
                RunStatus::Failed
            },
            plan: Method::Milp,
            models: "m".into(),
            latency_s: latency,
            predicted_latency_s: latency,
            slo_met: ok && latency <= 10.0,
            energy_j: energy,
            energy_method: Some(Meter::Estimate),
            predicted_energy_j: energy,
            cost_usd: energy * 1e-6,
            quality: 1.0,
            tokens_in: 1,
            tokens_out: 1,
            error: String::new(),
        }
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 95.0), 19.0);
        assert_eq!(percentile(&v, 100.0), 20.0);
        assert_eq!(percentile(&[3.0], 95.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn groups_reduce_per_workflow_and_for_the_suite() {
        let rows = vec![
            row("a", Strategy::Static, 4.0, 100.0, true),
            row("a", Strategy::Static, 12.0, 300.0, true),
            row("a", Strategy::Joule, 5.0, 50.0, true),
            row("a", Strategy::Joule, 6.0, 50.0, false),
            row("b", Strategy::Static, 1.0, 10.0, true),
            row("b", Strategy::Joule, 1.0, 10.0, true),
        ];
        let gs = groups(&rows);
        let find = |w: &str, p: Strategy| {
            gs.iter()
                .find(|g| g.workflow == w && g.policy == p)
                .unwrap()
        };
        let a_static = find("a", Strategy::Static);
        assert_eq!(a_static.requests, 2);
        assert_eq!(a_static.mean_latency_s, 8.0);
        assert_eq!(a_static.p95_latency_s, 12.0);
        assert_eq!(a_static.slo_attainment, 0.5);
        assert_eq!(a_static.energy_j_per_request, 200.0);
        let a_joule = find("a", Strategy::Joule);
        assert_eq!(a_joule.failed, 1);
        assert_eq!(a_joule.slo_attainment, 0.5);
        let (e, _) = versus(&gs, a_joule, Strategy::Static).unwrap();
        assert_eq!(e, 0.25);
        // The suite: (100 + 300 + 10) / 3 for static, (50 + 50 + 10) / 3 for joule.
        let s = find(SUITE, Strategy::Static);
        let j = find(SUITE, Strategy::Joule);
        assert_eq!(s.requests, 3);
        assert!((versus(&gs, j, Strategy::Static).unwrap().0 - 110.0 / 410.0).abs() < 1e-12);
        let md = markdown("t", &gs, &["a note".into()]);
        assert!(md.contains("- a note"));
        assert!(md.contains("0.25 (4.00x less)"), "{md}");
        assert!(versus(&gs, j, Strategy::Greedy).is_none());
    }
}
