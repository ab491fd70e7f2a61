//! What constrained decoding costs: decode speed of the same chat prompt free, under a JSON
//! Schema, and under a tool-call grammar, alone and as four streams batched together (each
//! with its own mask). The free stream decodes as many tokens as the constrained one did
//! (end-of-sequence ignored), so both rows time the same number of decode steps. Greedy
//! decoding gives every repeat the same answer; the rates are medians of five runs. The
//! mask's own cost per token is also timed alone (no model), which a shared 2-vCPU machine's
//! noise does not blur: its share is that time over a free decode step's.
//!
//! `cargo bench -p joule-lab --bench constrained [-- MODEL...]`; models that are not
//! downloaded are skipped with a note. `JOULE_BENCH_TOKENS` caps the answer (default 96).

use std::sync::Arc;

use joule_models::local::constrain::Constrainer;
use joule_models::local::tools::{self, Choice, Function};
use joule_models::local::{Flow, Generation, Grammar, LoadedModel, Message, Request};
mod common;
use serde_json::json;

const PROMPT: &str = "List twenty things a support agent checks before refunding a customer, \
                      as JSON: an object with a `checks` array of short strings.";

fn request(max_tokens: usize, grammar: Option<Grammar>, ignore_eos: bool) -> Request {
    Request {
        grammar,
        ignore_eos,
        ..Request::chat(vec![Message::new("user", PROMPT)], max_tokens)
    }
}

fn run(model: &LoadedModel, r: &Request) -> Generation {
    model.generate(r, &mut |_| Flow::Continue).unwrap()
}

/// `n` copies of `r` at once; the aggregate decode rate (tokens after each first over the
/// time after the last first token) and the generations.
fn together(model: &Arc<LoadedModel>, r: &Request, n: usize) -> (f64, Vec<Generation>) {
    let started = std::time::Instant::now();
    let gens: Vec<Generation> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let model = model.clone();
                let r = r.clone();
                s.spawn(move || run(&model, &r))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let first = gens
        .iter()
        .map(|g| g.queue_s + g.ttft_s)
        .fold(0.0, f64::max);
    let decoded: usize = gens
        .iter()
        .map(|g| g.completion_tokens.saturating_sub(1))
        .sum();
    (decoded as f64 / (wall - first).max(1e-9), gens)
}

/// Runs of each kind per row.
const REPEATS: usize = 5;

/// Whether an answer is one whole JSON document (a tool call's inside its tags).
fn parses(text: &str) -> bool {
    let text = text.trim();
    let body = text
        .strip_prefix("<tool_call>")
        .and_then(|t| t.strip_suffix("</tool_call>"))
        .unwrap_or(text);
    serde_json::from_str::<serde_json::Value>(body.trim()).is_ok()
}

/// Seconds the grammar's mask and advance take per token, alone: the tokens of the model's
/// constrained answer (read back through `logprobs`) replayed through a fresh guide over a
/// full-vocabulary row, as the engine does each step, with no model in the timing.
fn mask_cost(model: &LoadedModel, grammar: &Grammar, cap: usize) -> f64 {
    let answer = run(
        model,
        &Request {
            logprobs: Some(0),
            ..request(cap, Some(grammar.clone()), false)
        },
    );
    let ids: Vec<u32> = answer.logprobs.iter().map(|t| t.id).collect();
    let constrainer = Constrainer::new();
    let vocab = model.tokenizer.token_bytes().unwrap().len();
    let mut times = Vec::new();
    for _ in 0..REPEATS {
        let mut guide = constrainer.guide(&model.tokenizer, grammar).unwrap();
        let mut row = vec![0f32; vocab];
        let started = std::time::Instant::now();
        for &id in &ids {
            guide.mask(&mut row).unwrap();
            guide.commit(id).unwrap();
        }
        times.push(started.elapsed().as_secs_f64() / ids.len().max(1) as f64);
    }
    median(&mut times)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let bench = common::start();
    let cap = common::count("JOULE_BENCH_TOKENS", 96);
    let schema = json!({
        "type": "object",
        "properties": {"checks": {"type": "array", "items": {"type": "string", "maxLength": 60}}},
        "required": ["checks"],
    });
    let tool = tools::grammar(
        &[Function {
            name: "record_checks".into(),
            parameters: schema.clone(),
        }],
        &Choice::Required,
        false,
        None,
    );
    let threads = bench.threads;
    println!("constrained decoding on cpu ({threads} threads), answers of up to {cap} tokens");
    for (id, path) in bench.models() {
        let model = Arc::new(
            LoadedModel::load(
                &id,
                &path,
                &candle_core::Device::Cpu,
                bench.settings.load_options(),
            )
            .unwrap(),
        );
        // Warm-up: the grammar compiler's per-model trie, the weights' pages.
        let _ = run(
            &model,
            &request(4, Some(Grammar::json_schema(&schema)), false),
        );
        println!("{id}:");
        println!(
            "{:<12} {:>7} {:>7} {:>16} {:>10} {:>9} {:>14} {:>11}",
            "form",
            "streams",
            "tokens",
            "constrained t/s",
            "free t/s",
            "slower",
            "mask us/token",
            "mask share"
        );
        for (form, grammar) in [
            ("json_schema", Grammar::json_schema(&schema)),
            ("tool call", tool.clone()),
        ] {
            let mask_s = mask_cost(&model, &grammar, cap);
            for n in [1usize, 4] {
                // Constrained and free runs alternate, `REPEATS` of each; medians are shown.
                let (mut constrained, mut free) = (Vec::new(), Vec::new());
                let mut gens = Vec::new();
                let mut tokens = 1;
                for _ in 0..REPEATS {
                    let (rate, g) =
                        together(&model, &request(cap, Some(grammar.clone()), false), n);
                    constrained.push(rate);
                    gens = g;
                    tokens = gens.iter().map(|g| g.completion_tokens).min().unwrap_or(1);
                    free.push(together(&model, &request(tokens, None, true), n).0);
                }
                let (constrained, free) = (median(&mut constrained), median(&mut free));
                let parsed = gens.iter().filter(|g| parses(&g.text)).count();
                println!(
                    "{form:<12} {n:>7} {tokens:>7} {constrained:>16.1} {free:>10.1} {:>8.1}% {:>14.0} {:>10.1}%   ({parsed}/{n} parse whole{})",
                    (free / constrained - 1.0) * 100.0,
                    mask_s * 1e6,
                    mask_s * free * 100.0,
                    if tokens >= cap {
                        ", cut at the cap"
                    } else {
                        ""
                    },
                );
            }
        }
    }
}
