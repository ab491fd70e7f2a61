//! The quality model in the planner: step-level figures over task-level ones, the reference
//! for unmeasured steps, the workflow's tolerance as an MILP constraint, and the confidence
//! bound that keeps a lucky small sample from replacing the reference.

use joule_planner::catalog::Catalog;
use joule_planner::estimate::Environment;
use joule_planner::plan::{self, Plan, Request};
use joule_planner::profile::Profiles;
use joule_planner::quality::Level;
use joule_planner::{CompileContext, SourceFile, compile_source};

const BIG: &str = "qwen2.5-coder-1.5b";
const MID: &str = "qwen2.5-coder-0.5b";
const SMALL: &str = "smollm2-135m";

fn workflow(quality: &str, task: &str) -> String {
    format!(
        "name: q\n{quality}\ninputs:\n  text: {{ type: string }}\nsteps:\n  work:\n    task: {task}\n    prompt: \"Do it: {{{{ inputs.text }}}}\"\n    max_tokens: 64\noutputs:\n  out: \"{{{{ steps.work.output }}}}\"\n"
    )
}

/// The reference profile plus `extra` (a profile file's text).
fn profiles(extra: &str) -> Profiles {
    let mut p = Profiles::reference();
    if !extra.is_empty() {
        p.merge(Profiles::parse(&SourceFile::new("extra.yaml", extra)).unwrap());
    }
    p
}

fn plan_of(yaml: &str, profiles: &Profiles) -> Result<Plan, plan::PlanError> {
    let dag = compile_source(&SourceFile::new("q.yaml", yaml), &CompileContext::default())
        .unwrap_or_else(|e| panic!("{e:?}"));
    plan::plan(
        &dag,
        &Catalog::builtin(),
        profiles,
        &Environment::default(),
        &Request::default(),
    )
}

fn model_of(plan: &Plan) -> &str {
    plan.steps[0].model.as_deref().unwrap()
}

/// Step-level figures of `work` in workflow `q`: (model, value, loss, loss_se, n).
fn step_figures(rows: &[(&str, f64, f64, f64, u32)]) -> String {
    let mut out = String::from("name: tuned\nstep_quality:\n");
    for (model, value, loss, se, n) in rows {
        out.push_str(&format!(
            "  - {{ workflow: q, step: work, model: {model}, value: {value}, se: 0.05, n: {n}, reference: {BIG}, loss: {loss}, loss_se: {se}, source: measured, eval: examples }}\n"
        ));
    }
    out
}

/// Measured task-level classify figures from 60 items each.
const TASK_FIGURES: &str = "name: eval\nquality:\n  - { model: qwen2.5-coder-1.5b, task: classify, value: 0.9, source: measured, n: 60 }\n  - { model: qwen2.5-coder-0.5b, task: classify, value: 0.6, source: measured, n: 60 }\n  - { model: smollm2-135m, task: classify, value: 0.3, source: measured, n: 60 }\n";

#[test]
fn an_unmeasured_step_runs_on_its_reference_unless_the_workflow_says_any() {
    // The reference profile's `write` figures are estimates (a ranking by size): nothing is
    // measured, so the step stays on the best-quality model.
    let p = profiles("");
    let safe = plan_of(&workflow("", "write"), &p).unwrap();
    assert_eq!(model_of(&safe), BIG);
    let basis = safe.steps[0].quality_basis.as_ref().unwrap();
    assert_eq!(basis.level, Level::Reference);
    assert!(
        safe.to_text().contains("reference"),
        "the plan says which figure it used:\n{}",
        safe.to_text()
    );
    let any = plan_of(&workflow("quality: any", "write"), &p).unwrap();
    assert_eq!(
        model_of(&any),
        SMALL,
        "`quality: any` lets the cheapest model run it"
    );
    assert!(any.totals.energy_j < safe.totals.energy_j);
}

#[test]
fn a_step_level_figure_beats_a_task_level_one() {
    let yaml = workflow("quality: { within: 0.05 }", "classify");
    // Task-level: the mid model loses 0.3 on the generic eval, so the tolerance keeps the
    // reference.
    let task_only = plan_of(&yaml, &profiles(TASK_FIGURES)).unwrap();
    assert_eq!(model_of(&task_only), BIG);
    // On this workflow's own examples the mid model loses nothing: it is chosen, and the plan
    // says the figure is the step's, from 40 items.
    let mut p = profiles(TASK_FIGURES);
    p.merge(
        Profiles::parse(&SourceFile::new(
            "tuned.yaml",
            step_figures(&[(BIG, 0.9, 0.0, 0.0, 40), (MID, 0.9, 0.0, 0.005, 40)]),
        ))
        .unwrap(),
    );
    let tuned = plan_of(&yaml, &p).unwrap();
    assert_eq!(model_of(&tuned), MID);
    let basis = tuned.steps[0].quality_basis.as_ref().unwrap();
    assert_eq!((basis.level, basis.n), (Level::Step, Some(40)));
    assert_eq!(tuned.steps[0].quality, Some(0.9));
    // The small model has only its task-level figure, far off: still excluded by the bound.
    assert!(tuned.totals.quality_loss <= 0.05);
}

#[test]
fn a_tighter_tolerance_moves_the_step_to_a_bigger_model() {
    let p = profiles(&step_figures(&[
        (BIG, 0.9, 0.0, 0.0, 40),
        (MID, 0.87, 0.03, 0.005, 40),
        (SMALL, 0.7, 0.2, 0.01, 40),
    ]));
    let pick = |within: f64| {
        let yaml = workflow(&format!("quality: {{ within: {within} }}"), "classify");
        let plan = plan_of(&yaml, &p).unwrap();
        assert!(
            plan.violations.is_empty(),
            "checked independently: {:?}",
            plan.violations
        );
        (model_of(&plan).to_string(), plan.totals.quality_loss)
    };
    let (loose, loss) = pick(0.5);
    assert_eq!(loose, SMALL);
    assert!((loss - (0.2 + 1.645 * 0.01)).abs() < 1e-9, "{loss}");
    assert_eq!(pick(0.1).0, MID);
    assert_eq!(pick(0.01).0, BIG);
}

/// Without a stated tolerance a measured model replaces the reference only where it loses
/// nothing, even at the upper end of its interval: a small loss keeps the reference, an
/// exact tie (a step no scored output reads is one) does not.
#[test]
fn without_a_tolerance_only_a_model_that_loses_nothing_replaces_the_reference() {
    let yaml = workflow("", "classify");
    let lossy = profiles(&step_figures(&[
        (BIG, 0.9, 0.0, 0.0, 40),
        (MID, 0.89, 0.01, 0.004, 40),
    ]));
    let plan = plan_of(&yaml, &lossy).unwrap();
    assert_eq!(model_of(&plan), BIG);
    let tie = profiles(&step_figures(&[
        (BIG, 0.9, 0.0, 0.0, 40),
        (MID, 0.9, 0.0, 0.0, 40),
    ]));
    assert_eq!(model_of(&plan_of(&yaml, &tie).unwrap()), MID);
    let tolerant = workflow("quality: { within: 0.05 }", "classify");
    assert_eq!(model_of(&plan_of(&tolerant, &lossy).unwrap()), MID);
}

/// The static baseline is what a hand-tuned application runs: every step on its reference,
/// even where a tune found a smaller model that ties it (joule's measurement, not the
/// baseline's).
#[test]
fn the_static_baseline_stays_on_the_reference_when_a_tune_found_a_tie() {
    let tie = profiles(&step_figures(&[
        (BIG, 0.9, 0.0, 0.0, 40),
        (MID, 0.9, 0.0, 0.0, 40),
    ]));
    let dag = compile_source(
        &SourceFile::new("q.yaml", workflow("", "classify")),
        &CompileContext::default(),
    )
    .unwrap();
    let plan_with = |strategy| {
        plan::plan(
            &dag,
            &Catalog::builtin(),
            &tie,
            &Environment::default(),
            &Request {
                strategy,
                ..Request::default()
            },
        )
        .unwrap()
    };
    assert_eq!(
        model_of(&plan_with(joule_planner::solve::Strategy::Static)),
        BIG
    );
    assert_eq!(
        model_of(&plan_with(joule_planner::solve::Strategy::Joule)),
        MID
    );
}

#[test]
fn the_confidence_bound_keeps_a_noisy_small_sample_winner_out() {
    // Five examples where the small model happened to beat the reference (mean loss -0.05),
    // against forty where the mid model is within 0.01.
    let p = profiles(&step_figures(&[
        (BIG, 0.9, 0.0, 0.0, 40),
        (MID, 0.89, 0.01, 0.004, 40),
        (SMALL, 0.95, -0.05, 0.1, 5),
    ]));
    let plan = plan_of(&workflow("quality: { within: 0.05 }", "classify"), &p).unwrap();
    assert_eq!(
        model_of(&plan),
        MID,
        "a mean would have let the small model in; its bound does not"
    );
}

#[test]
fn a_tolerance_that_the_slo_cannot_meet_is_explained() {
    let p = profiles(&step_figures(&[
        (BIG, 0.9, 0.0, 0.0, 40),
        (SMALL, 0.5, 0.4, 0.01, 40),
    ]));
    let yaml = workflow(
        "quality: { within: 0.01 }\nbudget: { latency: 20s }",
        "classify",
    );
    let dag = compile_source(
        &SourceFile::new("q.yaml", &yaml),
        &CompileContext::default(),
    )
    .unwrap();
    // Only the small model is fast enough for 20s; the tolerance forbids it.
    let err = plan::plan(
        &dag,
        &Catalog::builtin(),
        &p,
        &Environment::default(),
        &Request::default(),
    )
    .unwrap_err();
    let plan::PlanError::Infeasible(why) = err else {
        panic!("{err}");
    };
    let text = why.to_text();
    assert!(text.contains("conflicts with the quality budget"), "{text}");
}

#[test]
fn workflow_quality_rules_are_checked() {
    for (rule, message) in [
        ("quality: 0.8", "a tolerance, not a floor"),
        ("quality: { within: 2 }", "not a number in 0..1"),
        ("quality: { within: 0.1, other: 1 }", "not understood"),
        ("quality: none", "not understood"),
    ] {
        let yaml = workflow(rule, "classify");
        let errors = compile_source(
            &SourceFile::new("q.yaml", &yaml),
            &CompileContext::default(),
        )
        .unwrap_err();
        assert!(
            errors.iter().any(|e| e.message.contains(message)),
            "{rule}: {errors:?}"
        );
        assert_eq!(errors[0].pos.line, 2, "{rule}: points at the rule");
    }
}

#[test]
fn examples_score_outputs_with_known_metrics() {
    let base = "name: q\ninputs:\n  text: { type: string }\nsteps:\n  work:\n    prompt: \"{{ inputs.text }}\"\noutputs:\n  out: \"{{ steps.work.output }}\"\n";
    let ok = format!(
        "{base}examples:\n  file: q.jsonl\n  score:\n    out: {{ judge: {{ model: {BIG}, prompt: \"Rate {{{{ answer }}}}\" }} }}\n"
    );
    let dag = compile_source(&SourceFile::new("q.yaml", &ok), &CompileContext::default()).unwrap();
    let examples = dag.workflow.examples.as_ref().unwrap();
    assert_eq!(examples.file, "q.jsonl");
    assert_eq!(examples.scores[0].metric.name(), "judge");
    for (score, message, line) in [
        ("out: rouge", "`rouge` is not a metric", 12),
        (
            "missing: label",
            "scores `missing`, which is not an output",
            12,
        ),
        (
            "out: { judge: { model: x } }",
            "a judge needs a `model` and a `prompt`",
            12,
        ),
        ("out: { label: { x: 1 } }", "takes no options", 12),
    ] {
        let yaml = format!("{base}examples:\n  file: q.jsonl\n  score:\n    {score}\n");
        let errors = compile_source(
            &SourceFile::new("q.yaml", &yaml),
            &CompileContext::default(),
        )
        .unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.message.contains(message) && e.pos.line == line),
            "{score}: {errors:?}"
        );
    }
}
