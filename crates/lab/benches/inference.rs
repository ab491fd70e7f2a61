//! Local inference speed of each catalog model on this machine: load time, prefill of a
//! 128-token prompt and decode of 128 tokens, the figures llama.cpp's `llama-bench` reports
//! (pp128, tg128), so the two can be compared side by side in BENCHMARKS.md.
//!
//! `cargo bench --bench inference [-- MODEL...]`; models that are not downloaded are skipped
//! with a note (fetch them with `joule models fetch`). Set JOULE_BENCH_RUNS to change the
//! number of timed runs (default 3; the median is reported).

use std::time::Instant;

use joule_models::local::{Flow, LoadedModel, Prompt, Request};

mod common;

const PROMPT_TOKENS: usize = 128;
const DECODE_TOKENS: usize = 128;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A prompt of exactly `n` tokens of ordinary English.
fn prompt_of(model: &LoadedModel, n: usize) -> Vec<u32> {
    let words = "the quick brown fox jumps over the lazy dog while a small bird sings ";
    let ids = model.tokenizer.encode(&words.repeat(n)).unwrap();
    ids[..n].to_vec()
}

fn request_for(tokens: Vec<u32>, max_tokens: usize) -> Request {
    Request {
        prompt: Prompt::Tokens(tokens),
        ..Request::text("", max_tokens)
    }
}

fn main() {
    let bench = common::start();
    let runs = common::count("JOULE_BENCH_RUNS", 3);
    let threads = bench.threads;
    println!("local inference on cpu ({threads} threads), median of {runs} runs");
    println!(
        "{:<20} {:>8} {:>14} {:>14} {:>10}",
        "model", "load s", "pp128 tok/s", "tg128 tok/s", "ttft s"
    );
    for (id, path) in bench.models() {
        let mut loads = Vec::new();
        let mut loaded = None;
        for _ in 0..runs {
            let started = Instant::now();
            let m = LoadedModel::load(
                &id,
                &path,
                &candle_core::Device::Cpu,
                bench.settings.load_options(),
            )
            .unwrap();
            loads.push(started.elapsed().as_secs_f64());
            loaded = Some(m);
        }
        let m = loaded.unwrap();
        let prompt = prompt_of(&m, PROMPT_TOKENS);

        let mut prefill = Vec::new();
        let mut ttft = Vec::new();
        let mut decode = Vec::new();
        for _ in 0..runs {
            let g = m
                .generate(&request_for(prompt.clone(), 1), &mut |_| Flow::Continue)
                .unwrap();
            assert_eq!(g.prompt_tokens, PROMPT_TOKENS);
            prefill.push(g.prefill_tokens_per_s);
            ttft.push(g.ttft_s);
            // Decode from a one-token prompt, as llama-bench's tg128 does.
            let mut request = request_for(prompt[..1].to_vec(), DECODE_TOKENS + 1);
            request.ignore_eos = true;
            let g = m.generate(&request, &mut |_| Flow::Continue).unwrap();
            assert_eq!(g.completion_tokens, DECODE_TOKENS + 1);
            decode.push(g.decode_tokens_per_s);
        }
        println!(
            "{:<20} {:>8.2} {:>14.1} {:>14.1} {:>10.3}",
            id,
            median(loads),
            median(prefill),
            median(decode),
            median(ttft)
        );
    }
}
