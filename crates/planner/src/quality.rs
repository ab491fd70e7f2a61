//! The quality model: what running a step on a model costs in answer quality, against the
//! step's reference (the best-quality model the planner may use for it).
//!
//! A figure measured on the workflow's own examples (`joule tune`, [`StepQuality`]) beats a
//! task-level one (a generic eval of the step's task), which beats nothing. A config only
//! counts as close to the reference when it is so *with confidence*: the loss the solver sees
//! is the upper end of a one-sided 95% interval, not the mean, so twenty examples where a
//! small model happened to tie cannot move a step off its reference. Losses of different
//! steps are summed: measured with one step changed at a time, a sum is the first-order
//! model of changing several, and it errs on the safe side when losses overlap (two steps
//! that spoil the same answers cost less together than the sum says).

use serde::{Deserialize, Serialize};

use crate::catalog::Model;
use crate::figure::Source;
use crate::profile::Profiles;
use crate::spec::Task;

/// The one-sided 95% normal quantile.
pub const Z95: f64 = 1.645;

/// Where a config's quality figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Measured on this workflow's examples, with this step on this model.
    Step,
    /// A task-level eval of the model.
    Task,
    /// The step's reference model itself: no loss by definition.
    Reference,
    /// No figure.
    None,
}

/// Which quality figure a config's prediction rests on, for plans to show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Basis {
    pub level: Level,
    /// The step's reference model.
    pub reference: String,
    /// Items the figure was measured on, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// The evaluation it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<String>,
    /// The mean loss against the reference (the solver uses the bound).
    pub loss_mean: f64,
    /// The workflow's score with every step on its reference, where `joule tune` measured
    /// it: with the mean losses, what a plan predicts its outputs score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_value: Option<f64>,
}

/// A config's quality, as the planner uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// The figure shown: the step-level score where measured, else the task-level one.
    pub quality: Option<f64>,
    /// Upper confidence bound of the loss against the reference, never below 0; `None` when
    /// nothing measured says how far this model is from the reference.
    pub loss: Option<f64>,
    pub basis: Basis,
}

/// The reference model among `candidates`: the one the workflow's tuning used, where it is
/// a candidate; else the best task-level quality; else the largest model (more parameters
/// answer better, other things equal, and nothing measured says otherwise).
pub fn reference<'a>(
    profiles: &Profiles,
    workflow: &str,
    step: &str,
    task: Task,
    candidates: &[&'a Model],
) -> Option<&'a Model> {
    let tuned = candidates.iter().find_map(|m| {
        let q = profiles.step_quality(workflow, step, &m.id)?;
        candidates.iter().find(|c| c.id == q.reference)
    });
    if let Some(t) = tuned {
        return Some(*t);
    }
    candidates.iter().copied().max_by(|a, b| {
        let q = |m: &Model| profiles.quality(&m.id, task).map(|q| q.value);
        q(a).unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&q(b).unwrap_or(f64::NEG_INFINITY))
            .then(a.parameters.cmp(&b.parameters))
            .then(a.size_bytes.cmp(&b.size_bytes))
            .then(b.id.cmp(&a.id))
    })
}

/// The standard error of a mean score of `n` items, when only the mean is known: a 0/1
/// score's binomial error, the largest a 0..1 score can have for that mean.
fn binomial_se(value: f64, n: Option<u32>) -> f64 {
    match n {
        Some(n) if n > 0 => (value * (1.0 - value) / f64::from(n)).sqrt(),
        // A published figure names no sample; it is taken as exact.
        _ => 0.0,
    }
}

/// How `model` on `step` compares with the step's `reference`.
pub fn judge(
    profiles: &Profiles,
    workflow: &str,
    step: &str,
    task: Task,
    model: &str,
    reference: &str,
) -> Judged {
    let task_q = profiles.quality(model, task);
    let step_q = profiles.step_quality(workflow, step, model);
    let quality = step_q.map(|q| q.value).or(task_q.map(|q| q.value));
    let reference_value = profiles
        .step_quality(workflow, step, reference)
        .map(|r| r.value);
    let basis = |level, n, eval: Option<&String>, loss_mean| Basis {
        level,
        reference: reference.to_string(),
        n,
        eval: eval.cloned(),
        loss_mean,
        reference_value,
    };
    if model == reference {
        let (n, eval) = match (step_q, task_q) {
            (Some(s), _) => (Some(s.n), s.eval.as_ref()),
            (None, Some(t)) => (t.n, t.eval.as_ref()),
            (None, None) => (None, None),
        };
        return Judged {
            quality,
            loss: Some(0.0),
            basis: basis(Level::Reference, n, eval, 0.0),
        };
    }
    if let Some(s) = step_q {
        let (mean, se) = if s.reference == reference {
            (s.loss, s.loss_se)
        } else if let Some(r) = profiles.step_quality(workflow, step, reference) {
            // Measured against another reference: compare the two means, unpaired.
            (r.value - s.value, r.se.hypot(s.se))
        } else {
            (f64::NAN, 0.0)
        };
        if mean.is_finite() {
            return Judged {
                quality: Some(s.value),
                loss: Some((mean + Z95 * se).max(0.0)),
                basis: basis(Level::Step, Some(s.n), s.eval.as_ref(), mean),
            };
        }
    }
    // An estimated figure (a ranking by size) says nothing about how far apart two models
    // are; only measured or published ones do.
    let known = |q: &&crate::profile::Quality| q.source >= Source::Published;
    if let (Some(m), Some(r)) = (
        task_q.filter(known),
        profiles.quality(reference, task).filter(known),
    ) {
        let mean = r.value - m.value;
        let se = binomial_se(r.value, r.n).hypot(binomial_se(m.value, m.n));
        return Judged {
            quality,
            loss: Some((mean + Z95 * se).max(0.0)),
            basis: basis(Level::Task, m.n, m.eval.as_ref(), mean),
        };
    }
    Judged {
        quality,
        loss: None,
        basis: basis(Level::None, None, None, 0.0),
    }
}
