//! The cost model against hand-computed figures: tokens, latency, energy and cost of one step
//! on one config follow the documented formulas from the reference profile and catalog.

use joule_planner::catalog::Catalog;
use joule_planner::estimate::{
    self, CHARS_PER_TOKEN, Environment, INPUT_TOKENS, MESSAGE_OVERHEAD_TOKENS,
};
use joule_planner::profile::Profiles;
use joule_planner::{CompileContext, SourceFile, compile_source};

// `quality: any`: every config is costed, not only each step's reference.
const WORKFLOW: &str = r#"name: t
quality: any
inputs:
  doc: { type: string }
policy: { providers: [local, openai] }
steps:
  ask:
    task: answer
    prompt: "Summarise: {{ inputs.doc }}"
    max_tokens: 50
  fan:
    task: extract
    for_each: "{{ steps.ask.output | lines }}"
    expect: 5
    prompt: "Extract from {{ item }}"
    max_tokens: 10
"#;

fn problem() -> estimate::Problem {
    let dag = compile_source(
        &SourceFile::new("t.yaml", WORKFLOW),
        &CompileContext::default(),
    )
    .unwrap();
    estimate::problem(
        &dag,
        &Catalog::builtin(),
        &Profiles::reference(),
        &Environment::default(),
    )
}

fn config<'a>(
    p: &'a estimate::Problem,
    step: usize,
    model: &str,
    device: &str,
) -> &'a estimate::Config {
    p.steps[step]
        .configs
        .iter()
        .find(|c| c.model.as_deref() == Some(model) && c.device == device)
        .unwrap_or_else(|| panic!("no {model} on {device}"))
}

#[test]
fn llm_step_figures_follow_the_formulas() {
    let p = problem();
    let c = config(&p, 0, "qwen2.5-coder-1.5b", "cpu");
    let tokens_in =
        "Summarise: ".len() as f64 / CHARS_PER_TOKEN + MESSAGE_OVERHEAD_TOKENS + INPUT_TOKENS;
    assert!(
        (c.tokens_in - tokens_in).abs() < 1e-9,
        "{} vs {tokens_in}",
        c.tokens_in
    );
    // A free-text answer is expected to take half its `max_tokens` until runs measure it.
    assert_eq!(c.tokens_out, 25.0);
    // Reference profile: prefill 5.3 tok/s, decode 14.3 tok/s, 20 W; catalog: $0.15/kWh, $0.02/h.
    let latency = tokens_in / 5.3 + 25.0 / 14.3;
    assert!((c.latency_s - latency).abs() < 1e-9);
    assert!((c.energy_j - 20.0 * latency).abs() < 1e-9);
    let cost = 20.0 * latency * 0.15 / 3.6e6 + 0.02 * latency / 3600.0;
    assert!((c.cost_usd - cost).abs() < 1e-12);
    assert_eq!(
        c.source,
        joule_planner::figure::Source::Estimate,
        "power is an estimate, so the energy is"
    );
}

/// A run's planner knows its inputs: a given 40-character document counts 10 tokens, not the
/// typical 200 a plan without inputs assumes.
#[test]
fn a_run_plans_with_the_length_of_its_given_inputs() {
    let dag = compile_source(
        &SourceFile::new("t.yaml", WORKFLOW),
        &CompileContext::default(),
    )
    .unwrap();
    let doc = "x".repeat(38);
    let inputs = serde_json::json!({ "doc": doc });
    let sized = estimate::sized_by(&dag, inputs.as_object().unwrap());
    let p = estimate::problem(
        &sized,
        &Catalog::builtin(),
        &Profiles::reference(),
        &Environment::default(),
    );
    let c = config(&p, 0, "qwen2.5-coder-1.5b", "cpu");
    // The value's JSON text: 38 characters and two quotes.
    let tokens_in = "Summarise: ".len() as f64 / CHARS_PER_TOKEN + MESSAGE_OVERHEAD_TOKENS + 10.0;
    assert!(
        (c.tokens_in - tokens_in).abs() < 1e-9,
        "{} vs {tokens_in}",
        c.tokens_in
    );
    assert!(
        dag.workflow.inputs[0].default.is_none(),
        "the workflow is unchanged"
    );
}

#[test]
fn endpoint_cost_is_price_times_tokens() {
    let p = problem();
    let c = config(&p, 0, "gpt-4o-mini", "openai");
    let cost = (c.tokens_in * 0.15 + c.tokens_out * 0.60) / 1e6;
    assert!((c.cost_usd - cost).abs() < 1e-15);
    assert!(
        c.residency.is_none() && c.resource.is_none(),
        "an endpoint loads nothing and runs requests in parallel"
    );
}

#[test]
fn for_each_multiplies_calls_and_splits_its_source() {
    let p = problem();
    let c = config(&p, 1, "smollm2-135m", "cpu");
    assert_eq!(c.calls, 5);
    // Each call reads one element: the upstream output (50 tokens) over the 5 expected elements.
    let per_call_in =
        "Extract from ".len() as f64 / CHARS_PER_TOKEN + MESSAGE_OVERHEAD_TOKENS + 25.0 / 5.0;
    assert!(
        (c.tokens_in - 5.0 * per_call_in).abs() < 1e-9,
        "{}",
        c.tokens_in
    );
    let per_call = per_call_in / 29.5 + 10.0 / 23.5;
    assert!((c.latency_s - 5.0 * per_call).abs() < 1e-9);
    assert_eq!(p.steps[1].preds, vec![0]);
}

#[test]
fn models_are_loaded_once_per_device() {
    let p = problem();
    let loads: Vec<(&str, &str)> = p
        .residencies
        .iter()
        .map(|r| (r.model.as_str(), p.resources[r.resource].name.as_str()))
        .collect();
    let mut unique = loads.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(loads.len(), unique.len(), "{loads:?}");
    assert!(loads.contains(&("qwen2.5-coder-1.5b", "cpu")));
    // Both steps' qwen configs on the CPU share the one load.
    let a = config(&p, 0, "qwen2.5-coder-1.5b", "cpu").residency;
    let b = config(&p, 1, "qwen2.5-coder-1.5b", "cpu").residency;
    assert!(a.is_some() && a == b);
}

#[test]
fn a_resident_model_is_charged_no_load() {
    let cold = problem();
    let dag = compile_source(
        &SourceFile::new("t.yaml", WORKFLOW),
        &CompileContext::default(),
    )
    .unwrap();
    let env = Environment {
        resident: [("qwen2.5-coder-1.5b".to_string(), "cpu".to_string())].into(),
        ..Environment::default()
    };
    let warm = estimate::problem(&dag, &Catalog::builtin(), &Profiles::reference(), &env);
    let load = |p: &estimate::Problem, model: &str| {
        let r = config(p, 0, model, "cpu").residency.unwrap();
        (p.residencies[r].load_s, p.residencies[r].energy_j)
    };
    let (cold_s, cold_j) = load(&cold, "qwen2.5-coder-1.5b");
    assert!(cold_s > 0.0 && cold_j > 0.0, "{cold_s} s, {cold_j} J");
    assert_eq!(load(&warm, "qwen2.5-coder-1.5b"), (0.0, 0.0));
    // Only the pair named is warm: another model on the same device still loads.
    assert_eq!(load(&warm, "smollm2-135m"), load(&cold, "smollm2-135m"));
    assert!(load(&warm, "smollm2-135m").0 > 0.0);
}
