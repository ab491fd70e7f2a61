//! The quality a plan predicts for a benchmarked output (answers are scored by
//! [`crate::examples`]).

use joule_planner::Dag;
use joule_planner::plan::Plan;
use joule_planner::quality::Level;
use joule_planner::spec::StepKind;

/// The quality a plan predicts for the scored outputs. Where every llm step they depend on
/// was tuned on the workflow's examples, it is the reference score less the steps' mean
/// losses (the model the planner constrains, with means instead of bounds); otherwise the
/// lowest profiled quality among those steps (an answer is as good as the weakest model that
/// shaped it).
pub fn predicted_quality(dag: &Dag, plan: &Plan, outputs: &[&str]) -> Option<f64> {
    let wf = &dag.workflow;
    let mut weakest: Option<f64> = None;
    let (mut tuned, mut all_tuned, mut loss) = (None, true, 0.0);
    for i in crate::examples::steps_read_by(dag, outputs) {
        if matches!(wf.steps[i].kind, StepKind::Llm(_))
            && let Some(step) = plan.steps.get(i)
        {
            if let Some(q) = step.quality {
                weakest = Some(weakest.map_or(q, |x: f64| x.min(q)));
            }
            match step.quality_basis.as_ref() {
                Some(b) if b.reference_value.is_some() && b.level != Level::Task => {
                    tuned = b.reference_value;
                    loss += b.loss_mean;
                }
                _ => all_tuned = false,
            }
        }
    }
    match tuned {
        Some(r) if all_tuned => Some((r - loss).clamp(0.0, 1.0)),
        _ => weakest,
    }
}
