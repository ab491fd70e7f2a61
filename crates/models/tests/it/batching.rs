//! The batching engine on the real SmolLM2 file: answers do not depend on their company,
//! sequences join and leave mid-batch, cancelled ones free their cache, admission waits for
//! room under a small budget, and shared prompt prefixes come from the cache.

use std::sync::mpsc::channel;
use std::time::Duration;

use crate::support::{SMOL, smol, smol_path};
use joule_models::local::{
    EngineStatus, Flow, Generation, LoadOptions, LoadedModel, Message, Request,
};

/// How long a test waits for the engine to publish a state before failing.
const PATIENCE: Duration = Duration::from_secs(120);

fn ask(question: &str, max_tokens: usize) -> Request {
    Request::chat(vec![Message::new("user", question)], max_tokens)
}

fn run(model: &LoadedModel, request: &Request) -> Generation {
    model.generate(request, &mut |_| Flow::Continue).unwrap()
}

const QUESTIONS: [&str; 8] = [
    "What is the capital of France?",
    "Write a Python function that reverses a list.",
    "Classify this ticket as billing, technical or account: I was charged twice.",
    "Summarise in one sentence: the meeting moved the launch to May.",
    "Name three primary colours.",
    "What does HTTP stand for?",
    "Give me a haiku about the sea.",
    "How many legs does a spider have?",
];

fn idle(model: &LoadedModel) -> EngineStatus {
    let status = model
        .wait_for_engine(PATIENCE, |s| s.active == 0 && s.waiting == 0)
        .expect("the fast path batches");
    assert_eq!(status.active, 0, "the engine did not go idle: {status:?}");
    status
}

#[test]
fn greedy_answers_are_the_same_alone_and_in_a_batch_of_eight() {
    let model = smol();
    let requests: Vec<Request> = QUESTIONS.iter().map(|q| ask(q, 24)).collect();
    let alone: Vec<String> = requests.iter().map(|r| run(&model, r).text).collect();
    // All eight submitted before any is admitted: the engine takes them into one batch.
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = requests
            .iter()
            .map(|r| s.spawn(|| run(&model, r).text))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, t, "question {i} answered differently in company");
    }
    assert!(
        alone
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 4
    );
    idle(&model);
}

#[test]
fn a_request_joins_a_running_batch_and_leaves_before_it() {
    let model = smol();
    let mut long = ask(QUESTIONS[1], 48);
    long.ignore_eos = true;
    let short = ask(QUESTIONS[0], 6);
    let long_alone = run(&model, &long);
    let short_alone = run(&model, &short);
    let (started, wait) = channel();
    let (short_done, short_finished) = channel::<()>();
    let (long_result, short_result) = std::thread::scope(|s| {
        let long_thread = s.spawn(|| {
            let mut pieces = 0;
            let mut started = Some(started);
            let mut short_finished = Some(short_finished);
            model
                .generate(&long, &mut |_| {
                    pieces += 1;
                    if pieces == 2 {
                        // The long one is decoding: let the short one in, then keep going
                        // until it has left, so it really joined and left mid-batch.
                        started.take().unwrap().send(()).unwrap();
                    }
                    if pieces == 3 {
                        short_finished.take().unwrap().recv().unwrap();
                    }
                    Flow::Continue
                })
                .unwrap()
        });
        wait.recv().unwrap();
        let short_result = run(&model, &short);
        short_done.send(()).unwrap();
        (long_thread.join().unwrap(), short_result)
    });
    assert_eq!(short_result.text, short_alone.text);
    assert_eq!(long_result.text, long_alone.text);
    assert_eq!(long_result.completion_tokens, 48);
    idle(&model);
}

#[test]
fn a_cancelled_stream_frees_its_cache() {
    let model = smol();
    idle(&model);
    let mut request = ask(QUESTIONS[6], 200);
    request.ignore_eos = true;
    let g = model.generate(&request, &mut |_| Flow::Stop).unwrap();
    assert_eq!(
        g.finish_reason,
        joule_models::local::FinishReason::Cancelled
    );
    let status = model
        .wait_for_engine(PATIENCE, |s| s.kv_committed_blocks == 0 && s.active == 0)
        .unwrap();
    assert_eq!(status.kv_committed_blocks, 0, "{status:?}");
}

#[test]
fn a_request_given_up_while_it_waits_for_a_slot_leaves_without_running() {
    // One slot: a second request waits for the first to finish.
    let path = smol_path();
    let options = LoadOptions {
        batch: 1,
        ..LoadOptions::default()
    };
    let model = LoadedModel::load(SMOL, &path, &candle_core::Device::Cpu, options).unwrap();
    let mut long = ask(QUESTIONS[6], 400);
    long.ignore_eos = true;
    let (running, wait) = channel();
    std::thread::scope(|s| {
        let first = s.spawn(|| {
            let mut running = Some(running);
            model
                .generate(&long, &mut |_| {
                    if let Some(tx) = running.take() {
                        tx.send(()).unwrap();
                    }
                    Flow::Continue
                })
                .unwrap()
        });
        wait.recv().unwrap();
        let give_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut second = ask(QUESTIONS[0], 8);
        second.cancel = Some(give_up.clone());
        let model = &model;
        let waiter = s.spawn(move || model.generate(&second, &mut |_| Flow::Continue));
        let status = model.wait_for_engine(PATIENCE, |s| s.waiting == 1).unwrap();
        assert_eq!((status.active, status.waiting), (1, 1), "{status:?}");
        give_up.store(true, std::sync::atomic::Ordering::Relaxed);
        // Without the flag reaching the engine it would run once the first is done, and
        // answer.
        let err = waiter.join().unwrap().unwrap_err();
        assert!(err.to_string().contains("cancelled"), "{err}");
        assert_eq!(first.join().unwrap().completion_tokens, 400);
    });
    idle(&model);
}

/// A second copy of SmolLM2 whose KV pool holds `positions` positions.
fn small_pool(positions: u64) -> LoadedModel {
    let path = smol_path();
    let file = std::fs::metadata(&path).unwrap().len();
    // SmolLM2-135M: 30 layers, 3 kv heads of 64, keys and values in f32.
    let per_position = 2 * 30 * 3 * 64 * 4;
    let options = LoadOptions {
        memory_bytes: file + positions * per_position,
        ..LoadOptions::default()
    };
    let model = LoadedModel::load(SMOL, &path, &candle_core::Device::Cpu, options).unwrap();
    let status = model.engine_status().unwrap();
    assert_eq!(status.kv_capacity_blocks as u64, positions / 16);
    model
}

#[test]
fn admission_waits_for_room_and_starts_when_a_sequence_finishes() {
    let model = small_pool(160);
    let mut request = ask(QUESTIONS[3], 40);
    request.ignore_eos = true;
    let alone = run(&model, &request);
    let blocks = (alone.prompt_tokens + 40).div_ceil(16);
    assert!(2 * blocks > 10, "two such requests must not fit at once");
    let (running, wait) = channel();
    let results: Vec<Generation> = std::thread::scope(|s| {
        let first = s.spawn(|| {
            let mut running = Some(running);
            model
                .generate(&request, &mut |_| {
                    // Its first text: admitted and decoding, holding its blocks.
                    if let Some(tx) = running.take() {
                        tx.send(()).unwrap();
                    }
                    Flow::Continue
                })
                .unwrap()
        });
        wait.recv().unwrap();
        let second = s.spawn(|| run(&model, &request));
        let status = model
            .wait_for_engine(PATIENCE, |s| s.waiting == 1 || s.active == 0)
            .unwrap();
        // Seen waiting for the first one's blocks (or, on a slow machine, the first finished
        // before the second arrived); either way neither fails.
        assert!(status.waiting == 1 || status.active == 0, "{status:?}");
        vec![first.join().unwrap(), second.join().unwrap()]
    });
    for r in &results {
        assert_eq!(r.text, alone.text);
    }
    let too_long = ask(QUESTIONS[0], 400);
    let err = model
        .generate(&too_long, &mut |_| Flow::Continue)
        .unwrap_err();
    assert!(err.to_string().contains("memory budget"), "{err}");
}

#[test]
fn a_shared_prefix_comes_from_the_cache_and_old_blocks_are_evicted() {
    let model = small_pool(640);
    let system = "You are a careful assistant for a support team. Answer in one short sentence, \
                  name the category of the ticket, and never invent facts that are not in it.";
    let chat = |q: &str| {
        Request::chat(
            vec![Message::new("system", system), Message::new("user", q)],
            8,
        )
    };
    let cold = run(&model, &chat(QUESTIONS[2]));
    assert_eq!(cold.cached_prompt_tokens, 0);
    let warm = run(&model, &chat(QUESTIONS[4]));
    assert!(
        warm.cached_prompt_tokens >= 32,
        "the system prompt's whole blocks are reused: {}",
        warm.cached_prompt_tokens
    );
    assert!(warm.cached_prompt_tokens < warm.prompt_tokens);
    let again = run(&model, &chat(QUESTIONS[2]));
    assert_eq!(
        again.text, cold.text,
        "a cached prefix answers as a prefill does"
    );
    assert!(again.cached_prompt_tokens > warm.cached_prompt_tokens);
    let before = idle(&model);
    assert!(before.prefix_hits >= 2);
    // Different prompts that fill the pool push the least recently used blocks out.
    for q in QUESTIONS {
        let mut r = ask(&format!("{q} {q} {q}"), 60);
        r.ignore_eos = true;
        run(&model, &r);
    }
    let after = idle(&model);
    assert!(after.evictions > before.evictions, "{after:?}");
    assert!(after.kv_cached_blocks <= after.kv_capacity_blocks);
}
