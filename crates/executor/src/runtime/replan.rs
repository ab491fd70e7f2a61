//! Re-planning during a run (Murakkab's runtime reconfiguration): when the run falls behind,
//! the steps not yet started are planned again with what is left of the SLO.

use joule_planner::estimate::Problem;
use joule_planner::solve;

use super::{ConfigRef, Event, Slot};

/// Plans the steps not yet started again, with the finished and running ones fixed at no
/// further cost and the SLO shortened by the time already spent. Returns the event when the
/// new plan changes something.
#[allow(clippy::too_many_arguments)]
pub(super) fn replan(
    problem: &Problem,
    slots: &[Slot],
    configs: &mut [ConfigRef],
    planned_end: &mut [f64],
    plan_total: &mut f64,
    elapsed: f64,
    projected: f64,
    slo: f64,
) -> Option<Event> {
    let mut q = problem.clone();
    let mut fixed = 0;
    for (i, s) in q.steps.iter_mut().enumerate() {
        if matches!(slots[i], Slot::Waiting) {
            continue;
        }
        fixed += 1;
        let keep = s
            .configs
            .iter()
            .position(|c| c.model == configs[i].model && c.device == configs[i].device)
            .unwrap_or(0);
        let mut c = s.configs[keep].clone();
        c.latency_s = 0.0;
        c.energy_j = 0.0;
        c.cost_usd = 0.0;
        c.residency = None;
        s.configs = vec![c];
    }
    if fixed == q.steps.len() {
        return None;
    }
    q.budget.latency_s = Some((slo - elapsed).max(0.001));
    // The run waits while this solves: a second is plenty for the steps that are left, and a
    // time-limited answer is still a feasible one.
    let solved = solve::solve(&q, &solve::Options { time_limit_s: 1.0 });
    let (note, changes) = match solved {
        Ok(s) if s.status != solve::Status::Infeasible => {
            let mut changes = Vec::new();
            for (i, step) in q.steps.iter().enumerate() {
                if !matches!(slots[i], Slot::Waiting) {
                    continue;
                }
                let c = &step.configs[s.assignment[i]];
                let new = ConfigRef {
                    model: c.model.clone(),
                    device: c.device.clone(),
                };
                if new != configs[i] {
                    changes.push((step.id.clone(), configs[i].clone(), new.clone()));
                    configs[i] = new;
                }
                planned_end[i] = elapsed + s.schedule.end[i];
            }
            *plan_total = elapsed + s.totals.latency_s;
            if changes.is_empty() {
                (
                    "the current configs are still the best that fit".to_string(),
                    changes,
                )
            } else {
                (
                    format!(
                        "{} step(s) moved to faster or cheaper configs",
                        changes.len()
                    ),
                    changes,
                )
            }
        }
        _ => {
            // Nothing fits what is left of the SLO: keep going, and do not ask again until
            // the run slips further.
            *plan_total = projected;
            (
                "no plan fits what is left of the SLO; continuing as planned".to_string(),
                Vec::new(),
            )
        }
    };
    Some(Event::Replanned {
        elapsed_s: elapsed,
        projected_s: projected,
        slo_s: slo,
        changes,
        note,
    })
}
