//! The cost model: for every step and every config it may run on, predicted latency, energy,
//! cost and quality, from the profiles. Its output, a [`Problem`], is plain numbers: the solver
//! never sees YAML, models or profiles, which keeps it fast and lets tests feed it random
//! instances directly.
//!
//! Tokens in are the prompt's static text at about 4 characters a token plus what its
//! references produce (an llm step's expected answer, a tool's typical output). Tokens out are
//! the expected answer until runs teach the real counts: `max_tokens` for short, constrained
//! answers (`classify`, `extract`), [`FREE_TEXT_FRACTION`] of it for free text, which stops
//! at an end of sequence well before the bound (a 120- and a 200-token reply of the demo came
//! back with about 55 and 70 tokens). A `for_each` step makes `expect` calls one after another.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::catalog::Catalog;
use crate::dag::{Dag, EdgeKind};
use crate::figure::Source;
use crate::profile::Profiles;
use crate::spec::{Budget, InputType, LOCAL_PROVIDER, Objective, StepKind, Workflow};
use crate::template;

/// Characters per token when text is not tokenised.
pub const CHARS_PER_TOKEN: f64 = 4.0;
/// The share of `max_tokens` a free-text answer (write, summarize, answer, code) is expected
/// to take before a run of the step has measured it.
pub const FREE_TEXT_FRACTION: f64 = 0.5;

/// Tokens an llm step's answer is expected to have before runs measured it.
pub fn expected_output(llm: &crate::spec::LlmStep) -> f64 {
    let bound = f64::from(llm.max_tokens);
    match llm.task {
        crate::spec::Task::Classify | crate::spec::Task::Extract => bound,
        _ => (bound * FREE_TEXT_FRACTION).max(1.0),
    }
}

/// Tokens each tool offered to an agent adds to its prompt (name, description, schema).
pub const AGENT_TOOL_TOKENS: f64 = 80.0;
/// Tokens a tool step's output is assumed to have.
pub const TOOL_OUTPUT_TOKENS: f64 = 256.0;
/// Tokens a string input is assumed to have when the workflow gives no default.
pub const INPUT_TOKENS: f64 = 200.0;
/// Elements an array input is assumed to have.
pub const ARRAY_ELEMENTS: f64 = 5.0;
/// Chat-template tokens per message (role markers, separators).
pub const MESSAGE_OVERHEAD_TOKENS: f64 = 8.0;
/// Latency of a tool not in any profile.
pub const DEFAULT_TOOL_LATENCY_S: f64 = 0.5;
/// Latency of a value step (template rendering).
pub const VALUE_LATENCY_S: f64 = 0.001;
/// Power of the host CPU while it runs a tool (one busy core).
pub const HOST_W: f64 = 10.0;

/// Where a config runs, for the scheduler: a shared resource or not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resource {
    /// A local device id or an endpoint name.
    pub name: String,
    /// Runs one step at a time (a CPU or GPU with one stream, an endpoint with one slot).
    pub exclusive: bool,
    /// Memory for resident models, GB; `None` when not limited (an endpoint).
    pub memory_gb: Option<f64>,
}

/// A model loaded on a device for the run: paid once however many steps use it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Residency {
    pub model: String,
    pub resource: usize,
    pub load_s: f64,
    pub energy_j: f64,
    pub cost_usd: f64,
    pub memory_gb: f64,
}

/// One way to run one step, with its predicted figures (for all of a `for_each`'s calls).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub model: Option<String>,
    /// A device id, an endpoint name, or `host` for tool and value steps.
    pub device: String,
    /// The resource it occupies while it runs, if any.
    pub resource: Option<usize>,
    /// The model load it needs, if any.
    pub residency: Option<usize>,
    pub latency_s: f64,
    pub energy_j: f64,
    pub cost_usd: f64,
    pub quality: Option<f64>,
    /// Upper confidence bound of the quality loss against the step's reference (`None`:
    /// unmeasured, or not an llm step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Which quality figure `quality` and `loss` rest on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basis: Option<crate::quality::Basis>,
    pub calls: u32,
    pub tokens_in: f64,
    pub tokens_out: f64,
    /// Calls of this step the token counts were learned from; 0 when they are the template's
    /// estimate and `max_tokens`.
    #[serde(skip_serializing_if = "is_zero")]
    pub tokens_learned: u32,
    /// The weakest source among the figures the prediction rests on.
    pub source: Source,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepChoices {
    pub id: String,
    pub configs: Vec<Config>,
    /// Steps that must finish before this one starts.
    pub preds: Vec<usize>,
    /// Why configs were left out, when some were.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
}

/// The placement problem: what the solver optimises.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub steps: Vec<StepChoices>,
    pub resources: Vec<Resource>,
    pub residencies: Vec<Residency>,
    pub budget: Budget,
    pub objective: Objective,
}

/// What the planner may use on this machine.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Local devices present (`cpu`, `cuda:0`); endpoints come from the catalog and policy.
    pub devices: Vec<String>,
    /// Local models whose weights are on this machine; `None` plans as if all were. `joule
    /// run` sets it, so a plan never picks a model it would have to download first.
    pub local_models: Option<std::collections::BTreeSet<String>>,
    /// `(model, device)` pairs already in memory (a server or a benchmark keeps models
    /// loaded between runs): planning charges them no load time, energy or cost, since a run
    /// on them pays none.
    pub resident: std::collections::BTreeSet<(String, String)>,
}

impl Default for Environment {
    fn default() -> Self {
        Self {
            devices: vec!["cpu".to_string()],
            local_models: None,
            resident: std::collections::BTreeSet::new(),
        }
    }
}

/// Builds the problem for a compiled workflow.
pub fn problem(dag: &Dag, catalog: &Catalog, profiles: &Profiles, env: &Environment) -> Problem {
    let wf = &dag.workflow;
    let electricity = catalog.prices.electricity_usd_per_kwh.value / 3.6e6;

    // Resources: present local devices, then endpoints the policy allows.
    let mut resources = Vec::new();
    for d in &env.devices {
        if let Some(dev) = catalog.device(d)
            && wf.policy.providers.iter().any(|p| p == LOCAL_PROVIDER)
        {
            resources.push(Resource {
                name: dev.id.clone(),
                exclusive: dev.streams <= 1,
                memory_gb: Some(dev.memory_gb),
            });
        }
    }
    for e in &catalog.endpoints {
        if wf.policy.providers.iter().any(|p| p == &e.name) {
            resources.push(Resource {
                name: e.name.clone(),
                exclusive: e.streams == Some(1),
                memory_gb: None,
            });
        }
    }

    let out_tokens = output_tokens(dag);
    let mut residencies: Vec<Residency> = Vec::new();
    let mut residency_index: BTreeMap<(String, usize), usize> = BTreeMap::new();

    let steps = wf
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let preds = dag.dependencies(i);
            let mut excluded = Vec::new();
            let configs = match &step.kind {
                StepKind::Llm(llm) => {
                    let elements = if step.for_each.is_some() {
                        step.expect.max(1)
                    } else {
                        1
                    };
                    let estimated_in = input_tokens(dag, i, &out_tokens);
                    let max_out = f64::from(llm.max_tokens);
                    let expected_out = expected_output(llm);
                    let mut configs = Vec::new();
                    for (r, res) in resources.iter().enumerate() {
                        for model in &catalog.models {
                            let why_not =
                                |reason: String| format!("{} on {}: {reason}", model.id, res.name);
                            if llm.model.as_ref().is_some_and(|m| m.name != model.id)
                                || llm.device.as_ref().is_some_and(|d| d.name != res.name)
                            {
                                continue;
                            }
                            if wf
                                .policy
                                .models
                                .as_ref()
                                .is_some_and(|ms| !ms.contains(&model.id))
                            {
                                continue;
                            }
                            let endpoint = catalog.endpoint(&res.name);
                            if let Some(e) = endpoint {
                                if !e.models.contains(&model.id) {
                                    continue;
                                }
                            } else if model.source.is_none() {
                                continue;
                            } else if env
                                .local_models
                                .as_ref()
                                .is_some_and(|m| !m.contains(&model.id))
                            {
                                excluded.push(why_not(format!(
                                    "not fetched on this machine (`joule models fetch {}`)",
                                    model.id
                                )));
                                continue;
                            }
                            let Some(hw) = profiles.hardware(&model.id, &res.name) else {
                                continue;
                            };
                            let learned = profiles.step_tokens(&wf.name, &step.id, &model.id);
                            let (tokens_in, tokens_out) = learned.map_or(
                                (estimated_in, expected_out),
                                |t| (t.tokens_in, t.tokens_out.min(max_out)),
                            );
                            // An agent makes one model call per turn.
                            let calls = elements * agent_turns(llm, learned);
                            let (Some(prefill), Some(decode)) = (&hw.prefill_tps, &hw.decode_tps)
                            else {
                                excluded.push(why_not(
                                    "its profile lacks prefill or decode speed".into(),
                                ));
                                continue;
                            };
                            if tokens_in + tokens_out > f64::from(model.context) {
                                excluded.push(why_not(format!(
                                    "about {:.0} tokens exceed its context of {}",
                                    tokens_in + tokens_out,
                                    model.context
                                )));
                                continue;
                            }
                            let quality = profiles.quality(&model.id, llm.task);
                            if let Some(floor) = llm.quality {
                                match quality {
                                    Some(q) if q.value + 1e-12 >= floor => {}
                                    Some(q) => {
                                        excluded.push(why_not(format!(
                                            "quality {:.2} for {} is below the floor {floor}",
                                            q.value,
                                            llm.task.as_str()
                                        )));
                                        continue;
                                    }
                                    None => {
                                        excluded.push(why_not(format!(
                                            "no quality figure for {}",
                                            llm.task.as_str()
                                        )));
                                        continue;
                                    }
                                }
                            }
                            let overhead = hw.overhead_s.as_ref().map_or(0.0, |f| f.value);
                            let per_call = overhead
                                + tokens_in / prefill.value.max(1e-9)
                                + tokens_out / decode.value.max(1e-9);
                            let latency = per_call * f64::from(calls);
                            let power = hw.active_w.as_ref().map_or(0.0, |f| f.value);
                            let energy = power * latency;
                            let mut source = prefill.source.min(decode.source);
                            if let Some(p) = &hw.active_w {
                                source = source.min(p.source);
                            }
                            let cost = match endpoint {
                                Some(e) => {
                                    f64::from(calls)
                                        * (tokens_in * e.usd_per_million_input.value
                                            + tokens_out * e.usd_per_million_output.value)
                                        / 1e6
                                }
                                None => {
                                    let hourly = catalog
                                        .device(&res.name)
                                        .map_or(0.0, |d| d.usd_per_hour.value);
                                    energy * electricity + hourly * latency / 3600.0
                                }
                            };
                            // A local model is loaded once per run on its device.
                            let residency = endpoint.is_none().then(|| {
                                *residency_index
                                    .entry((model.id.clone(), r))
                                    .or_insert_with(|| {
                                        let warm = env
                                            .resident
                                            .contains(&(model.id.clone(), res.name.clone()));
                                        let load_s = match &hw.load_s {
                                            Some(f) if !warm => f.value,
                                            _ => 0.0,
                                        };
                                        let memory_gb = hw.memory_gb.as_ref().map_or_else(
                                            || {
                                                model
                                                    .size_bytes
                                                    .map_or(0.0, |b| b as f64 * 1.2 / 1e9)
                                            },
                                            |f| f.value,
                                        );
                                        let hourly = catalog
                                            .device(&res.name)
                                            .map_or(0.0, |d| d.usd_per_hour.value);
                                        residencies.push(Residency {
                                            model: model.id.clone(),
                                            resource: r,
                                            load_s,
                                            energy_j: power * load_s,
                                            cost_usd: power * load_s * electricity
                                                + hourly * load_s / 3600.0,
                                            memory_gb,
                                        });
                                        residencies.len() - 1
                                    })
                            });
                            if let Some(reason) = llm
                                .agent
                                .as_ref()
                                .and_then(|a| over_agent_budget(&a.budget, latency, energy, cost))
                            {
                                excluded.push(why_not(reason));
                                continue;
                            }
                            if let (Some(res_i), Some(limit)) = (residency, res.memory_gb)
                                && residencies[res_i].memory_gb > limit
                            {
                                excluded.push(why_not(format!(
                                    "needs {:.1} GB, the device has {limit} GB",
                                    residencies[res_i].memory_gb
                                )));
                                continue;
                            }
                            configs.push(Config {
                                model: Some(model.id.clone()),
                                device: res.name.clone(),
                                resource: Some(r).filter(|_| res.exclusive),
                                residency,
                                latency_s: latency,
                                energy_j: energy,
                                cost_usd: cost,
                                quality: quality.map(|q| q.value),
                                loss: None,
                                basis: None,
                                calls,
                                tokens_in: tokens_in * f64::from(calls),
                                tokens_out: tokens_out * f64::from(calls),
                                tokens_learned: learned.map_or(0, |t| t.n),
                                source,
                            });
                        }
                    }
                    judge_quality(profiles, catalog, wf, step, llm.task, &mut configs, &mut excluded);
                    if configs.is_empty() && excluded.is_empty() {
                        excluded.push(format!(
                            "no allowed device or endpoint offers a model for it (policy.providers: [{}]; local devices: [{}])",
                            wf.policy.providers.join(", "),
                            env.devices.join(", ")
                        ));
                    }
                    configs
                }
                StepKind::Tool(t) => {
                    let (latency, source) = profiles
                        .tool(&t.tool.name)
                        .map_or((DEFAULT_TOOL_LATENCY_S, Source::Estimate), |p| {
                            (p.latency_s, p.source)
                        });
                    vec![host_config(
                        if step.for_each.is_some() {
                            step.expect
                        } else {
                            1
                        },
                        latency,
                        source,
                        electricity,
                    )]
                }
                StepKind::Value(_) => vec![host_config(
                    1,
                    VALUE_LATENCY_S,
                    Source::Estimate,
                    electricity,
                )],
            };
            StepChoices {
                id: step.id.clone(),
                configs,
                preds,
                excluded,
            }
        })
        .collect();

    Problem {
        steps,
        resources,
        residencies,
        budget: wf.budget,
        objective: wf.objective,
    }
}

/// Model calls an agent step is expected to make per run: what its runs learned, else one
/// turn that calls tools and one that answers. A plain llm step makes one.
fn agent_turns(llm: &crate::spec::LlmStep, learned: Option<&crate::profile::StepTokens>) -> u32 {
    let Some(agent) = &llm.agent else {
        return 1;
    };
    let turns = learned
        .and_then(|t| t.turns)
        .map_or(2, |t| t.round().max(1.0) as u32);
    turns.min(agent.max_turns)
}

/// Why a config's predicted figures exceed its agent's own budget, if they do.
fn over_agent_budget(
    budget: &crate::spec::Budget,
    latency_s: f64,
    energy_j: f64,
    cost_usd: f64,
) -> Option<String> {
    let over = |what: &str, predicted: String, limit: String| {
        Some(format!(
            "its agent would take about {predicted}, over the agent's {what} budget of {limit}"
        ))
    };
    match *budget {
        crate::spec::Budget {
            latency_s: Some(l), ..
        } if latency_s > l => over("latency", format!("{latency_s:.1} s"), format!("{l} s")),
        crate::spec::Budget {
            energy_j: Some(e), ..
        } if energy_j > e => over("energy", format!("{energy_j:.0} J"), format!("{e} J")),
        crate::spec::Budget {
            cost_usd: Some(c), ..
        } if cost_usd > c => over("cost", format!("${cost_usd:.4}"), format!("${c}")),
        _ => None,
    }
}

fn host_config(calls: u32, per_call_s: f64, source: Source, electricity: f64) -> Config {
    let latency = per_call_s * f64::from(calls.max(1));
    let energy = HOST_W * latency;
    Config {
        model: None,
        device: "host".to_string(),
        resource: None,
        residency: None,
        latency_s: latency,
        energy_j: energy,
        cost_usd: energy * electricity,
        quality: None,
        loss: None,
        basis: None,
        calls: calls.max(1),
        tokens_in: 0.0,
        tokens_out: 0.0,
        tokens_learned: 0,
        source,
    }
}

/// Gives every config of an llm step its quality against the step's reference model, and
/// leaves out the configs the workflow's quality rule does not let it use unmeasured.
fn judge_quality(
    profiles: &Profiles,
    catalog: &Catalog,
    wf: &Workflow,
    step: &crate::spec::Step,
    task: crate::spec::Task,
    configs: &mut Vec<Config>,
    excluded: &mut Vec<String>,
) {
    let mut candidates: Vec<&crate::catalog::Model> = Vec::new();
    for c in configs.iter() {
        if let Some(m) = c.model.as_ref().and_then(|id| catalog.model(id))
            && !candidates.iter().any(|x| x.id == m.id)
        {
            candidates.push(m);
        }
    }
    let Some(reference) =
        crate::quality::reference(profiles, &wf.name, &step.id, task, &candidates)
    else {
        return;
    };
    let reference = reference.id.clone();
    configs.retain_mut(|c| {
        let model = c.model.clone().unwrap_or_default();
        let j = crate::quality::judge(profiles, &wf.name, &step.id, task, &model, &reference);
        // Unmeasured, a config may leave the reference only under `quality: any`; measured
        // with no tolerance stated, only where it loses nothing even at the upper end of its
        // confidence interval.
        let why = match j.loss {
            None if !wf.quality.allows_unmeasured() => Some(format!(
                "no measured quality for this step, so it runs on its reference {reference} (`joule tune` measures it; `quality: any` lets it run unmeasured)"
            )),
            Some(bound) if bound > 1e-9 && wf.quality == crate::spec::QualityRule::Reference => {
                Some(format!(
                    "its loss against the reference {reference} may be up to {bound:.3}, and the workflow states no tolerance (`quality: {{ within: x }}` accepts one)"
                ))
            }
            _ => None,
        };
        if let Some(why) = why {
            let reason = format!("{model} on {}: {why}", c.device);
            if !excluded.contains(&reason) {
                excluded.push(reason);
            }
            return false;
        }
        c.quality = j.quality;
        c.loss = j.loss;
        c.basis = Some(j.basis);
        true
    });
}

/// Tokens each step's output is expected to have (all calls of a `for_each` together).
fn output_tokens(dag: &Dag) -> Vec<f64> {
    let wf = &dag.workflow;
    let mut out = vec![0.0; wf.steps.len()];
    for &i in &dag.order {
        let step = &wf.steps[i];
        let calls = if step.for_each.is_some() {
            f64::from(step.expect.max(1))
        } else {
            1.0
        };
        out[i] = match &step.kind {
            StepKind::Llm(l) => expected_output(l) * calls,
            StepKind::Tool(_) => TOOL_OUTPUT_TOKENS * calls,
            StepKind::Value(v) => {
                let text: usize = v.strings().iter().map(|s| static_chars(s)).sum();
                (text as f64 / CHARS_PER_TOKEN
                    + data_deps(dag, i).map(|d| out[d]).sum::<f64>()
                    + inputs_read(wf, &v.strings()))
                    * calls
            }
        };
    }
    out
}

/// Prompt tokens of one call of llm step `i`.
fn input_tokens(dag: &Dag, i: usize, out: &[f64]) -> f64 {
    let wf = &dag.workflow;
    let step = &wf.steps[i];
    let StepKind::Llm(llm) = &step.kind else {
        return 0.0;
    };
    let mut texts = vec![llm.prompt.source.as_str()];
    if let Some(s) = &llm.system {
        texts.push(&s.source);
    }
    let chars: usize = texts.iter().map(|t| static_chars(t)).sum();
    // Steps the for_each iterates over contribute one element per call.
    let fanned: Vec<String> = step
        .for_each
        .as_ref()
        .and_then(|f| template::expression_variables(&f.source).ok())
        .unwrap_or_default();
    let expect = f64::from(step.expect.max(1));
    let mut tokens = chars as f64 / CHARS_PER_TOKEN + MESSAGE_OVERHEAD_TOKENS * texts.len() as f64;
    for d in data_deps(dag, i) {
        let id = &wf.steps[d].id;
        let per_item = fanned
            .iter()
            .any(|v| matches!(template::classify(v), template::Reference::Step(s, _) if s == id));
        tokens += if per_item { out[d] / expect } else { out[d] };
    }
    tokens += inputs_read(wf, &texts);
    if let Some(f) = &step.for_each {
        tokens += inputs_read(wf, &[f.source.as_str()]) / expect;
    }
    if let Some(agent) = &llm.agent {
        // The tools' descriptions, and on average half a turn of calls and results so far.
        tokens += AGENT_TOOL_TOKENS * agent.tools.len() as f64
            + (TOOL_OUTPUT_TOKENS + expected_output(llm)) / 2.0;
    }
    tokens
}

/// The workflow as one run's planner sees it: its inputs are known, so their lengths replace
/// the typical sizes [`inputs_read`] assumes (a 30-token ticket planned as 200 tokens made the
/// first-run prediction of the demo 60% high). Only the planner's copy changes.
pub fn sized_by(dag: &Dag, inputs: &serde_json::Map<String, serde_json::Value>) -> Dag {
    let mut sized = dag.clone();
    for input in &mut sized.workflow.inputs {
        if let Some(v) = inputs.get(&input.name) {
            input.default = Some(v.clone());
        }
    }
    sized
}

/// Tokens of the inputs the templates read: a default's length if given, else a typical size.
fn inputs_read(wf: &Workflow, texts: &[&str]) -> f64 {
    let mut names: Vec<&str> = Vec::new();
    for t in texts {
        for v in template::template_variables(t).unwrap_or_default() {
            if let template::Reference::Input(name) = template::classify(&v)
                && let Some(input) = wf.inputs.iter().find(|i| i.name == name)
                && !names.contains(&input.name.as_str())
            {
                names.push(&input.name);
            }
        }
    }
    names
        .iter()
        .filter_map(|n| wf.inputs.iter().find(|i| i.name == *n))
        .map(|input| match (&input.default, input.ty) {
            (Some(d), _) => d.to_string().len() as f64 / CHARS_PER_TOKEN,
            (None, InputType::Array) => INPUT_TOKENS * ARRAY_ELEMENTS,
            (None, InputType::String | InputType::Object) => INPUT_TOKENS,
            (None, _) => 1.0,
        })
        .sum()
}

fn data_deps(dag: &Dag, i: usize) -> impl Iterator<Item = usize> + '_ {
    dag.edges()
        .filter(move |e| e.to == i && e.kind == EdgeKind::Data)
        .map(|e| e.from)
}

/// Characters of a template outside `{{ }}`, `{% %}` and `{# #}` blocks.
fn static_chars(text: &str) -> usize {
    let mut count = 0;
    let mut rest = text;
    while let Some(start) = rest.find(['{']) {
        count += rest[..start].chars().count();
        let after = &rest[start..];
        let close = match after.as_bytes().get(1) {
            Some(b'{') => "}}",
            Some(b'%') => "%}",
            Some(b'#') => "#}",
            _ => {
                count += 1;
                rest = &after[1..];
                continue;
            }
        };
        match after.find(close) {
            Some(end) => rest = &after[end + 2..],
            None => return count,
        }
    }
    count + rest.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_text_excludes_template_blocks() {
        assert_eq!(
            static_chars("abc {{ x }} def {% if y %}g{% endif %}{# c #}"),
            "abc  def g".len()
        );
        assert_eq!(static_chars("a { b } c"), 9);
        assert_eq!(static_chars("open {{ never closed"), 5);
    }
}
