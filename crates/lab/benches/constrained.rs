//! What constrained decoding costs: decode speed of the same chat prompt free, under a JSON
//! Schema, and under a tool-call grammar, alone and as four streams batched together (each
//! with its own mask). The free stream decodes as many tokens as the constrained one did
//! (end-of-sequence ignored), so both rows time the same number of decode steps. Greedy
//! decoding gives every repeat the same answer; the rates are medians of three runs.
//!
//! `cargo bench -p joule-lab --bench constrained [-- MODEL...]`; models that are not
//! downloaded are skipped with a note. `JOULE_BENCH_TOKENS` caps the answer (default 96).

use std::sync::Arc;

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
const REPEATS: usize = 3;

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
            "{:<12} {:>7} {:>8} {:>12} {:>10} {:>14} {:>10}",
            "form", "streams", "tokens", "decode tok/s", "ms/token", "free tok/s", "cost"
        );
        for (form, grammar) in [
            ("json_schema", Grammar::json_schema(&schema)),
            ("tool call", tool.clone()),
        ] {
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
                let parsed = gens
                    .iter()
                    .filter(|g| {
                        let text = g.text.trim();
                        let body = text
                            .strip_prefix("<tool_call>")
                            .and_then(|t| t.strip_suffix("</tool_call>"))
                            .unwrap_or(text);
                        serde_json::from_str::<serde_json::Value>(body.trim()).is_ok()
                    })
                    .count();
                println!(
                    "{form:<12} {n:>7} {tokens:>8} {constrained:>12.1} {:>10.2} {free:>14.1} {:>9.1}%   ({parsed}/{n} parse whole{})",
                    1e3 / constrained * n as f64,
                    (free / constrained - 1.0) * 100.0,
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
