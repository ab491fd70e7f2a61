//! Many streams on one model: aggregate decode rate, per-stream inter-token latency (p50,
//! p99) and time to first token at 1, 2, 4 and 8 concurrent streams, and time to first token
//! of a 1,000-token prompt whose first 900 tokens were seen before, against a cold one. Each
//! stream decodes a fixed number of tokens (end-of-sequence ignored) from its own prompt.
//!
//! `cargo bench -p joule-lab --bench batching [-- MODEL...]`; models that are not downloaded
//! are skipped with a note. `JOULE_BENCH_TOKENS` sets the tokens per stream (default 64).
//! The same prompts go to llama.cpp's `llama-server -np N` in `scripts/bench-llama-batching`.

use std::sync::Arc;
use std::time::Instant;

use joule_models::local::{Flow, LoadOptions, LoadedModel, Prompt, Request};
mod common;

const PROMPT_TOKENS: usize = 64;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// `n` tokens of ordinary English, different for each `salt`.
fn prompt_of(model: &LoadedModel, n: usize, salt: usize) -> Vec<u32> {
    let words = format!(
        "stream {salt} reads: the quick brown fox jumps over the lazy dog while a small bird sings "
    );
    let ids = model.tokenizer.encode(&words.repeat(n)).unwrap();
    ids[..n].to_vec()
}

fn request(tokens: Vec<u32>, max_tokens: usize) -> Request {
    Request {
        prompt: Prompt::Tokens(tokens),
        ignore_eos: true,
        ..Request::text("", max_tokens)
    }
}

/// One stream: its token times after the first (seconds between tokens) and its TTFT.
fn stream(model: &LoadedModel, tokens: Vec<u32>, max_tokens: usize) -> (Vec<f64>, f64, usize) {
    let mut gaps = Vec::with_capacity(max_tokens);
    let mut last = None::<Instant>;
    let g = model
        .generate(&request(tokens, max_tokens), &mut |_| {
            let now = Instant::now();
            if let Some(t) = last {
                gaps.push((now - t).as_secs_f64());
            }
            last = Some(now);
            Flow::Continue
        })
        .unwrap();
    (gaps, g.ttft_s + g.queue_s, g.completion_tokens)
}

fn main() {
    let bench = common::start();
    let per_stream = common::count("JOULE_BENCH_TOKENS", 64);
    let threads = bench.threads;
    println!(
        "batched decoding on cpu ({threads} threads), {per_stream} tokens per stream after a {PROMPT_TOKENS}-token prompt"
    );
    for (id, path) in bench.models() {
        let model = Arc::new(
            LoadedModel::load(
                &id,
                &path,
                &candle_core::Device::Cpu,
                LoadOptions {
                    ..bench.settings.load_options()
                },
            )
            .unwrap(),
        );
        let rss = rss_bytes();
        let file = std::fs::metadata(&path).map_or(0, |m| m.len());
        println!(
            "{}: resident {:.0} MB for a {:.0} MB file ({:.2}x)",
            id,
            rss as f64 / 1e6,
            file as f64 / 1e6,
            rss as f64 / file as f64
        );
        println!(
            "{:>8} {:>12} {:>14} {:>10} {:>10} {:>10}",
            "streams", "agg tok/s", "per-stream", "itl p50 ms", "itl p99 ms", "ttft s"
        );
        let mut single = 0.0;
        for n in [1usize, 2, 4, 8] {
            let prompts: Vec<Vec<u32>> = (0..n)
                .map(|i| prompt_of(&model, PROMPT_TOKENS, i))
                .collect();
            let started = Instant::now();
            let results: Vec<(Vec<f64>, f64, usize)> = std::thread::scope(|s| {
                let handles: Vec<_> = prompts
                    .into_iter()
                    .map(|p| {
                        let model = model.clone();
                        s.spawn(move || stream(&model, p, per_stream))
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let wall = started.elapsed().as_secs_f64();
            let decoded: usize = results.iter().map(|r| r.2).sum();
            let mut gaps: Vec<f64> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
            let mut ttfts: Vec<f64> = results.iter().map(|r| r.1).collect();
            // Decode rate: tokens after each stream's first over the time after the last
            // stream's first token (prefill excluded, as llama.cpp's `predicted_per_second`).
            let decode_s: f64 = wall - percentile(&mut ttfts, 1.0);
            let agg = (decoded - n) as f64 / decode_s.max(1e-9);
            if n == 1 {
                single = agg;
            }
            println!(
                "{n:>8} {agg:>12.1} {:>14.1} {:>10.1} {:>10.1} {:>10.3}   ({:.2}x one stream)",
                agg / n as f64,
                percentile(&mut gaps, 0.5) * 1e3,
                percentile(&mut gaps, 0.99) * 1e3,
                percentile(&mut ttfts, 0.5),
                agg / single
            );
        }
        // Prefix reuse: 1,000 tokens, the first 900 seen before.
        let shared = prompt_of(&model, 900, 1000);
        let tail = |salt: usize| {
            let mut p = shared.clone();
            p.extend(prompt_of(&model, 100, salt));
            p
        };
        let cold = {
            let mut other = prompt_of(&model, 900, 2000);
            other.extend(prompt_of(&model, 100, 1));
            let (_, t, _) = stream(&model, other, 1);
            t
        };
        let _ = stream(&model, tail(3), 1);
        let (_, warm, _) = stream(&model, tail(4), 1);
        println!(
            "prefix reuse, 1,000-token prompt: cold ttft {cold:.3} s, 900 tokens cached {warm:.3} s ({:.1}x)",
            cold / warm
        );
    }
}

/// This process's resident set, from `/proc/self/statm`.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}
