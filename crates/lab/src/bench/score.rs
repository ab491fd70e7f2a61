//! Judging a benchmarked answer against its shipped expected value, and the quality a plan
//! predicts for it.

use joule_planner::Dag;
use joule_planner::plan::Plan;
use joule_planner::spec::StepKind;
use joule_planner::template::{self, Reference};
use serde_json::Value;

use joule_call::{Backend, Cancel};

use crate::eval::{self, Item, humaneval};

use super::BenchError;
use super::suite::{ScoreKind, accepted};

/// Scores one answer; the text says why it is not 1, when that is known.
pub async fn score(
    kind: ScoreKind,
    expected: &Value,
    answer: &str,
    backend: &dyn Backend,
    cancel: &Cancel,
) -> Result<(f64, String), BenchError> {
    Ok(match kind {
        ScoreKind::Label => {
            let want = expected.as_str().unwrap_or_default();
            if answer.trim().eq_ignore_ascii_case(want.trim()) {
                (1.0, String::new())
            } else {
                (0.0, format!("said {:?}, expected {want}", answer.trim()))
            }
        }
        ScoreKind::TokenF1 => (
            eval::score::token_f1(answer, &accepted(expected).unwrap_or_default()),
            String::new(),
        ),
        ScoreKind::Humaneval => {
            let problem: humaneval::Problem = serde_json::from_value(expected.clone())
                .map_err(|e| BenchError::Suite(format!("not a HumanEval problem: {e}")))?;
            eval::score(&Item::Code(problem), answer, backend, cancel)
                .await
                .map_err(|e| BenchError::Suite(e.to_string()))?
        }
    })
}

/// The quality a plan predicts for a workflow output: the lowest profiled quality among the
/// llm steps it depends on (an answer is as good as the weakest model that shaped it).
pub fn predicted_quality(dag: &Dag, plan: &Plan, output: &str) -> Option<f64> {
    let wf = &dag.workflow;
    let out = wf.outputs.iter().find(|o| o.name == output)?;
    let mut stack: Vec<usize> = template::template_variables(&out.template.source)
        .unwrap_or_default()
        .iter()
        .filter_map(|v| match template::classify(v) {
            Reference::Step(id, _) => wf.steps.iter().position(|s| s.id == id),
            _ => None,
        })
        .collect();
    let mut seen = vec![false; wf.steps.len()];
    let mut quality: Option<f64> = None;
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        if matches!(wf.steps[i].kind, StepKind::Llm(_))
            && let Some(q) = plan.steps.get(i).and_then(|s| s.quality)
        {
            quality = Some(quality.map_or(q, |x: f64| x.min(q)));
        }
        stack.extend(dag.dependencies(i));
    }
    quality
}
