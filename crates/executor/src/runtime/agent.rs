//! An agent step's loop: the model is called with the conversation so far and the tools it
//! may use; each tool call it asks for is policy-checked, run sandboxed like a tool step and
//! its result handed back; the loop ends when the model answers without calling a tool, or at
//! `max_turns`, whose call offers no tools.
//!
//! Every model and tool call is one attempt of the step's call site, numbered in the order the
//! loop made them, so the run store, the audit log and a replay (which answers attempt by
//! attempt and checks that each call is the one recorded) see the loop call by call with
//! nothing agent-specific. A resumed run re-walks the loop: an attempt whose recorded call is
//! exactly the one it would send again is answered from the record, so a finished tool call
//! never runs twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use joule_call::{Answer, Call, CallError, Function, LlmCall, Site, ToolCall, ToolUse, Turn};
use joule_planner::spec::Budget;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::attempt::{Done, Shared, Work, done, permitted, send};
use super::{ConfigRef, Event, Figures, Observation, check};

/// The most bytes of one tool result handed back to the model; the rest is cut with a note
/// (the audit log's hash covers the whole result).
const MAX_RESULT_BYTES: usize = 4096;

/// Told to the model with the results before its last turn.
const LAST_TURN: &str =
    "\n\n(No more tool calls: answer the question now, in plain words, from these results.)";

/// What the executor needs to run one agent step's loop.
pub(crate) struct Loop {
    /// The catalog tools the agent may call, as the model is offered them.
    pub(crate) functions: Vec<Function>,
    pub(crate) max_turns: u32,
    pub(crate) budget: Budget,
    /// The calls this loop made in the run being resumed, by attempt: what was sent, the
    /// answer that came back (successful ones only) and what it cost.
    pub(crate) recorded: HashMap<u32, (Value, Answer, Figures)>,
}

/// The loop's running totals.
struct Tally {
    attempts: u32,
    figures: Figures,
    started_s: Option<f64>,
    ended_s: f64,
    observations: Vec<Observation>,
}

pub(super) async fn run(sh: Arc<Shared>, w: Work, agent: Loop) -> Done {
    let mut tally = Tally {
        attempts: 0,
        figures: Figures::default(),
        started_s: None,
        ended_s: 0.0,
        observations: Vec::new(),
    };
    let (result, config) = match w.calls.first() {
        Some(Call::Llm(base)) => {
            let config = Call::Llm(base.clone()).config();
            (converse(&sh, &w, &agent, base, &mut tally).await, config)
        }
        _ => (
            Err("an agent step needs a model to run on".to_string()),
            ConfigRef::host(),
        ),
    };
    let ended = tally.ended_s.max(sh.meters.elapsed());
    let mut d = done(
        &w,
        result,
        config,
        tally.figures,
        tally.attempts,
        tally.started_s,
        ended,
    );
    d.observations = tally.observations;
    d
}

/// The turns, up to the final answer (the step's output) or the first reason to stop.
async fn converse(
    sh: &Shared,
    w: &Work,
    agent: &Loop,
    base: &LlmCall,
    tally: &mut Tally,
) -> Result<Value, String> {
    let model = Call::Llm(base.clone());
    if let Err(reason) = permitted(&sh.policy, &model) {
        refuse(sh, w, model.config(), &reason);
        return Err(format!("refused by the policy: {reason}"));
    }
    let mut turns: Vec<Turn> = Vec::new();
    // Calls already run and what they returned, so a model that asks for one again is given
    // the result again and told to answer.
    let mut answered: Vec<(String, Value, String)> = Vec::new();
    let mut last = false;
    for turn in 1..=agent.max_turns {
        last |= turn == agent.max_turns;
        let mut call = base.clone();
        call.turns = turns.clone();
        call.tools = if last {
            Vec::new()
        } else {
            agent.functions.clone()
        };
        let (answer, value) = model_turn(sh, w, agent, call, tally).await?;
        if let Some(value) = value {
            if let Some(o) = tally.observations.last_mut() {
                o.turns = Some(turn);
            }
            return Ok(value);
        }
        let uses: Vec<ToolUse> = answer
            .tool_calls
            .iter()
            .enumerate()
            .map(|(k, u)| ToolUse {
                // Ids of the loop's own, so the conversation (and its record) do not depend
                // on how an engine names calls.
                id: format!("call_{turn}_{k}"),
                ..u.clone()
            })
            .collect();
        turns.push(Turn::Assistant {
            content: answer.text.clone(),
            tool_calls: uses.clone(),
        });
        let earlier = |u: &ToolUse| {
            answered
                .iter()
                .find(|(name, args, _)| *name == u.name && *args == u.arguments)
                .map(|(_, _, content)| content.clone())
        };
        if let Some(results) = uses.iter().map(earlier).collect::<Option<Vec<_>>>()
            && !uses.is_empty()
        {
            // Small models re-ask for what they already have: they get it again, and the next
            // turn must answer.
            for (u, content) in uses.iter().zip(results) {
                turns.push(Turn::Tool {
                    id: u.id.clone(),
                    content: format!("{content}{LAST_TURN}"),
                });
            }
            last = true;
            continue;
        }
        for u in &uses {
            let content = tool_turn(sh, w, agent, turn, u, tally).await?;
            answered.push((u.name.clone(), u.arguments.clone(), content.clone()));
            turns.push(Turn::Tool {
                id: u.id.clone(),
                content,
            });
        }
        if turn + 1 == agent.max_turns
            && let Some(Turn::Tool { content, .. }) = turns.last_mut()
        {
            // The next call offers no tools; a model not told so writes a call as its answer.
            content.push_str(LAST_TURN);
        }
        over_budget(&agent.budget, tally, turn)?;
    }
    Err(format!(
        "the agent did not answer within {} turns",
        agent.max_turns
    ))
}

/// One model call, retried on transient errors (an answer failing the step's `output` check
/// is one). Returns the answer, and the step's value when it is the final answer.
async fn model_turn(
    sh: &Shared,
    w: &Work,
    agent: &Loop,
    mut call: LlmCall,
    tally: &mut Tally,
) -> Result<(Answer, Option<Value>), String> {
    let mut last_error = String::new();
    for attempt in 1..=w.retry + 1 {
        if attempt > 1 && call.temperature == 0.0 {
            // Greedy decoding would repeat the failed answer; sample instead.
            call.temperature = 0.7;
            call.seed = u64::from(attempt);
        }
        let sent = Call::Llm(call.clone());
        let offers_tools = !call.tools.is_empty();
        let result = attempt_of(sh, w, agent, &sent, tally, |a| {
            if offers_tools && !a.tool_calls.is_empty() {
                return Ok(None);
            }
            match &w.output {
                Some(spec) => check::check(spec, &a.text)
                    .map(Some)
                    .map_err(|e| CallError::transient(format!("output: {e}"))),
                None => Ok(Some(Value::String(a.text.trim().to_string()))),
            }
        })
        .await?;
        match result {
            Ok(done) => return Ok(done),
            Err(e) if e.transient && !sh.cancel.is_cancelled() => {
                last_error = e.message;
                if attempt <= w.retry && !sh.no_backoff {
                    let wait = joule_call::backoff(
                        Duration::from_secs_f64(w.backoff_s.max(0.0)),
                        Duration::from_secs(30),
                        attempt,
                        sh.seed ^ u64::from(tally.attempts),
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = sh.cancel.cancelled() => {}
                    }
                }
            }
            Err(e) => return Err(e.message),
        }
    }
    Err(format!("{last_error} (after {} attempts)", w.retry + 1))
}

/// One tool call the model asked for: refused (and never run) unless the agent was given the
/// tool and the policy allows it; otherwise run like a tool step. Returns what the model is
/// told: the tool's output, its error, or why it was refused.
async fn tool_turn(
    sh: &Shared,
    w: &Work,
    agent: &Loop,
    turn: u32,
    u: &ToolUse,
    tally: &mut Tally,
) -> Result<String, String> {
    let call = ToolCall {
        tool: u.name.clone(),
        args: arguments(&u.arguments),
        // The catalog's limits bound the tool; the step's timeout is for its model calls.
        timeout_s: None,
        network: sh.policy.network.contains(&u.name),
        sandbox: sh.policy.sandbox.clone(),
    };
    let call = Call::Tool(call);
    let refusal = if agent.functions.iter().any(|f| f.name == u.name) {
        permitted(&sh.policy, &call).err()
    } else {
        Some(format!(
            "`{}` is not one of this agent's tools ({})",
            u.name,
            agent
                .functions
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    let record = |attempt: Option<u32>, outcome: Result<&str, &str>, refused: Option<&str>| {
        let _ = sh.events.send(Event::AgentToolCall {
            step: w.site.step.clone(),
            index: w.site.index,
            turn,
            id: u.id.clone(),
            tool: u.name.clone(),
            arguments: u.arguments.clone(),
            attempt,
            result_sha256: outcome
                .ok()
                .map(|text| hex::encode(Sha256::digest(text.as_bytes()))),
            error: outcome.err().map(str::to_string),
            refused: refused.map(str::to_string),
        });
    };
    if let Some(reason) = refusal {
        tracing::warn!(step = %w.site.step, tool = %u.name, %reason, "policy refused an agent's tool call");
        refuse(sh, w, ConfigRef::host(), &reason);
        record(None, Err("refused"), Some(&reason));
        return Ok(format!("refused: {reason}"));
    }
    let result = attempt_of(sh, w, agent, &call, tally, |a| {
        Ok(a.text.trim_end().to_string())
    })
    .await?;
    let attempt = Some(tally.attempts);
    Ok(match result {
        Ok((_, text)) => {
            record(attempt, Ok(&text), None);
            cut(text)
        }
        Err(e) => {
            record(attempt, Err(&e.message), None);
            format!("error: {}", e.message)
        }
    })
}

/// One attempt: answered from the resumed run's record when it sent exactly this call,
/// otherwise sent, with its start and end events. `judge` turns an answer into its value, or
/// the error that makes the attempt fail. `Err` only when the run was cancelled.
async fn attempt_of<T>(
    sh: &Shared,
    w: &Work,
    agent: &Loop,
    call: &Call,
    tally: &mut Tally,
    judge: impl Fn(&Answer) -> Result<T, CallError>,
) -> Result<Result<(Answer, T), CallError>, String> {
    if sh.cancel.is_cancelled() {
        return Err("cancelled".into());
    }
    tally.attempts += 1;
    let site = Site {
        attempt: tally.attempts,
        ..w.site.clone()
    };
    let call_json = serde_json::to_value(call).unwrap_or_default();
    if let Some((sent, answer, spent)) = agent.recorded.get(&site.attempt)
        && *sent == call_json
    {
        // Finished before the kill: its events are in the store already, and what it cost
        // is part of the step's cost.
        tally.figures.absorb(spent);
        return Ok(judge(answer).map(|v| (answer.clone(), v)));
    }
    let Some(sent) = send(sh, &site, call, call_json, None, w.timeout_s).await else {
        return Err("cancelled".into());
    };
    tally.started_s.get_or_insert(sent.begin);
    tally.ended_s = sent.end;
    tally.figures.absorb(&sent.figures);
    let judged = sent.result.clone().and_then(|a| judge(&a).map(|v| (a, v)));
    let f = sent.figures;
    let config = call.config();
    let _ = sh.events.send(Event::AttemptEnded {
        step: w.site.step.clone(),
        index: w.site.index,
        attempt: site.attempt,
        config: config.clone(),
        ok: judged.is_ok(),
        answer: sent.result.as_ref().ok().cloned(),
        error: judged.as_ref().err().map(|e| e.message.clone()),
        transient: judged.as_ref().err().is_some_and(|e| e.transient),
        cached: false,
        figures: f,
    });
    if let (Call::Llm(_), Ok(_), Some(model)) = (call, &sent.result, &config.model) {
        tally
            .observations
            .push(Observation::of(&w.site.step, model, &config.device, &f));
    }
    Ok(judged)
}

fn refuse(sh: &Shared, w: &Work, config: ConfigRef, reason: &str) {
    let _ = sh.events.send(Event::PolicyRefused {
        step: w.site.step.clone(),
        index: w.site.index,
        config,
        reason: reason.to_string(),
    });
}

/// A model's arguments as a tool call's: strings as they are, other values as JSON text. The
/// tool backend checks them against the catalog (unknown names, types, sizes), and its error
/// goes back to the model like any tool error.
fn arguments(v: &Value) -> BTreeMap<String, String> {
    match v {
        Value::Object(o) => o
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// A tool result as the model is shown it: at most [`MAX_RESULT_BYTES`].
fn cut(mut text: String) -> String {
    if text.len() <= MAX_RESULT_BYTES {
        return text;
    }
    let mut end = MAX_RESULT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let total = text.len();
    text.truncate(end);
    text.push_str(&format!("\n[cut: {total} bytes in all]"));
    text
}

/// Whether the loop has used up its own budget after `turn` turns.
fn over_budget(budget: &Budget, tally: &Tally, turn: u32) -> Result<(), String> {
    let f = &tally.figures;
    let elapsed = tally.ended_s - tally.started_s.unwrap_or(tally.ended_s);
    let over = [
        ("latency", budget.latency_s, elapsed, "s"),
        ("energy", budget.energy_j, f.energy_j, "J"),
        ("cost", budget.cost_usd, f.cost_usd, "USD"),
    ]
    .into_iter()
    .find_map(|(what, limit, used, unit)| {
        limit
            .filter(|l| used > *l)
            .map(|l| format!("{what} {used:.3} {unit} over the agent's budget of {l} {unit}"))
    });
    match over {
        Some(why) => Err(format!("stopped after {turn} turns: {why}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_arguments_become_tool_arguments() {
        let args =
            arguments(&serde_json::json!({"pattern": "energy", "n": 3, "deep": true, "x": null}));
        assert_eq!(args["pattern"], "energy");
        assert_eq!(args["n"], "3");
        assert_eq!(args["deep"], "true");
        assert!(!args.contains_key("x"));
        assert!(arguments(&serde_json::json!("not an object")).is_empty());
    }

    #[test]
    fn long_results_are_cut_on_a_character_boundary() {
        let text = "é".repeat(MAX_RESULT_BYTES);
        let shown = cut(text.clone());
        assert!(shown.len() < text.len());
        assert!(shown.ends_with(&format!("[cut: {} bytes in all]", text.len())));
        assert_eq!(cut("short".into()), "short");
    }

    #[test]
    fn the_budget_stops_a_loop_that_spent_it() {
        let mut tally = Tally {
            attempts: 3,
            figures: Figures::default(),
            started_s: Some(1.0),
            ended_s: 4.0,
            observations: Vec::new(),
        };
        tally.figures.energy_j = 50.0;
        let budget = |energy_j| Budget {
            latency_s: Some(10.0),
            energy_j,
            cost_usd: None,
            quality_loss: None,
        };
        assert!(over_budget(&budget(Some(100.0)), &tally, 2).is_ok());
        let e = over_budget(&budget(Some(20.0)), &tally, 2).unwrap_err();
        assert!(e.contains("energy") && e.contains("after 2 turns"), "{e}");
    }
}
