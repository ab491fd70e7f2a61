//! A run given the expected values of its scored outputs (`joule run --expected`): its answers
//! are scored as a tune scores an example and folded into the step-level figures its plan
//! observed, as calibration folds a run's speeds into the machine's. A workflow's figures so
//! keep learning from production runs whose right answers are known, not only from tunes.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use joule_app::{AppError, Assembly};
use joule_call::{Backend, Cancel};
use joule_planner::Dag;
use joule_planner::plan::Plan;
use joule_planner::spec::OutputScore;
use serde_json::{Map, Value};

use crate::examples::{self, Example};

/// What a run's outputs are scored against, checked before the run starts.
#[derive(Debug, Clone)]
pub struct Expected {
    scores: Vec<OutputScore>,
    example: Example,
}

/// Checks `raw` (an object keyed by scored outputs, or the bare value when one output is
/// scored) against the workflow's `examples: score:`.
pub fn expected(
    dag: &Dag,
    workflow_file: &Path,
    inputs: &Map<String, Value>,
    raw: Value,
) -> Result<Expected, AppError> {
    let bad = |e: examples::ExamplesError| AppError::invalid(format!("--expected: {e}"));
    let scores = examples::scores_of(dag, workflow_file)
        .map_err(bad)?
        .to_vec();
    let expected = examples::expected(raw, &scores).map_err(bad)?;
    Ok(Expected {
        scores,
        example: Example {
            id: "run".into(),
            inputs: inputs.clone(),
            expected,
        },
    })
}

/// What scoring a run did: its score, why it is not 1, and how many step-level figures took
/// it in (none when the plan used no tuned figure, or changed more than one step).
#[derive(Debug, Clone)]
pub struct Scored {
    pub score: f64,
    pub details: Vec<String>,
    pub figures: usize,
}

/// Scores a succeeded run's `outputs` and folds the score into the calibration profile.
pub async fn observe(
    assembly: &Assembly,
    workspace: &Path,
    plan: &Plan,
    outputs: &Value,
    expected: &Expected,
    cancel: &Cancel,
) -> Result<Scored, AppError> {
    let locals = assembly.local_backends()?;
    let devices: BTreeSet<&str> = plan.steps.iter().map(|s| s.device.as_str()).collect();
    let router: Arc<dyn Backend> = Arc::new(assembly.router(&locals, workspace, &devices)?);
    let (score, details) = examples::score_outputs(
        &expected.scores,
        &expected.example,
        outputs,
        &*router,
        cancel,
    )
    .await
    .map_err(|e| AppError::failed(format!("scoring the run: {e}")))?;
    let figures = joule_app::profiles::observe_quality(
        &assembly.settings,
        &assembly.profiles,
        &plan.workflow,
        plan,
        score,
    )?;
    Ok(Scored {
        score,
        details,
        figures,
    })
}
