//! Continuous batching: one thread per resident model steps every active sequence together.
//!
//! Decoding on a CPU is bound by reading the weights, so a step that feeds one token of each
//! of eight sequences costs little more than a step for one: this is where a shared model's
//! throughput comes from. Each step reads every weight once ([`joule_infer::Model::forward_batch`]);
//! requests join at the next step and leave the moment they finish, are cancelled or their
//! caller stops listening, returning their KV blocks to the pool; a long prompt is fed in
//! chunks of [`PREFILL_CHUNK`] tokens between decode steps, so it does not stall the streams
//! already decoding. Admission waits while the pool cannot promise a request's worst case
//! (prompt plus `max_tokens`), so a running sequence never runs out of cache and nothing
//! swaps. Sampling is per sequence (its own seed, temperature, `max_tokens`, end tokens);
//! stop strings are the caller's ([`super::generate::Decoder`]), which ends its sequence by
//! dropping its receiver.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use candle_transformers::generation::{LogitsProcessor, Sampling};
use joule_infer::{Feed, KvPool, Model, Sequence};
use serde::Serialize;

use super::constrain::Guide;
use super::logprobs::TokenLogprob;

/// Prompt tokens fed per step across all sequences still prefilling: enough for the products
/// to reach their tiled speed, few enough that decoding streams wait one short step.
pub const PREFILL_CHUNK: usize = 256;

/// What one request asks of the engine.
pub(crate) struct Job {
    pub tokens: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Tokens that end the answer (none when the request ignores end-of-sequence).
    pub stop_ids: Vec<u32>,
    /// The answer's grammar, if it has one: tokens it forbids are masked before sampling.
    pub guide: Option<Guide>,
    /// Log-probabilities wanted: of each token and of this many alternatives.
    pub logprobs: Option<usize>,
    pub events: Sender<Event>,
    /// Set by the caller to end the sequence at the next step.
    pub cancel: Arc<AtomicBool>,
}

/// What the engine tells the caller, in order: admitted, tokens, and nothing after the last
/// (the sender is dropped when the sequence leaves).
pub(crate) enum Event {
    Admitted {
        queue_s: f64,
        cached_tokens: usize,
    },
    /// A sampled token (the first says the prompt is done), with its log-probabilities when
    /// the request asked for them.
    Token(u32, Option<TokenLogprob>),
    Failed(String),
}

/// The engine's state for `/health`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EngineStatus {
    /// Sequences a step may carry.
    pub batch_capacity: usize,
    pub active: usize,
    pub waiting: usize,
    pub kv_budget_bytes: u64,
    pub kv_block_bytes: u64,
    pub kv_capacity_blocks: usize,
    /// Blocks held by or promised to running sequences.
    pub kv_committed_blocks: usize,
    /// Blocks kept for prefix reuse that no sequence holds.
    pub kv_cached_blocks: usize,
    pub prefix_hits: u64,
    pub evictions: u64,
}

/// The engine's status as of its last step, and a signal at every change.
#[derive(Default)]
struct Published {
    status: Mutex<EngineStatus>,
    changed: Condvar,
}

/// The handle requests reach the engine thread through.
pub struct Batcher {
    jobs: Mutex<Option<Sender<Job>>>,
    status: Arc<Published>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Positions the pool can hold for one sequence at most.
    max_positions: usize,
}

struct Active {
    job: Job,
    seq: Sequence,
    /// Prompt tokens not fed yet.
    fed: usize,
    /// The token sampled last, fed at the next step.
    next: Option<u32>,
    generated: usize,
    sampler: LogitsProcessor,
}

impl Batcher {
    /// Starts the engine thread for `model` with a KV pool of `kv_budget_bytes` and up to
    /// `capacity` sequences per step.
    pub fn start(
        model: Model,
        kv_budget_bytes: u64,
        capacity: usize,
        name: &str,
    ) -> std::io::Result<Self> {
        let pool = model.pool(kv_budget_bytes);
        let max_positions = pool.usage().capacity_blocks * joule_infer::kv::BLOCK;
        let status = Arc::new(Published {
            status: Mutex::new(EngineStatus {
                batch_capacity: capacity,
                ..EngineStatus::default()
            }),
            changed: Condvar::new(),
        });
        let (tx, rx) = channel();
        let shared = status.clone();
        let thread = std::thread::Builder::new()
            .name(format!("engine {name}"))
            .spawn(move || Engine::new(model, pool, capacity, shared).run(rx))?;
        Ok(Self {
            jobs: Mutex::new(Some(tx)),
            status,
            thread: Mutex::new(Some(thread)),
            max_positions,
        })
    }

    pub fn status(&self) -> EngineStatus {
        *self.status.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (up to `timeout`) until the engine publishes a status that `ready` accepts, and
    /// returns the last one seen: how a caller learns that a cancelled sequence has left or
    /// that a request is waiting for room, without polling.
    pub fn wait_for(
        &self,
        timeout: Duration,
        ready: impl Fn(&EngineStatus) -> bool,
    ) -> EngineStatus {
        let guard = self.status.status.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .status
            .changed
            .wait_timeout_while(guard, timeout, |s| !ready(s))
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    /// Most positions (prompt plus answer) one sequence can be given.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Queues a job; `false` if the engine has stopped.
    pub(crate) fn submit(&self, job: Job) -> bool {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok())
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        // Closing the queue ends the thread once its sequences are done.
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// The engine thread's state.
struct Engine {
    model: Model,
    pool: KvPool,
    capacity: usize,
    waiting: VecDeque<(Job, Instant)>,
    active: Vec<Active>,
    status: Arc<Published>,
}

impl Engine {
    fn new(model: Model, pool: KvPool, capacity: usize, status: Arc<Published>) -> Self {
        Self {
            model,
            pool,
            capacity,
            waiting: VecDeque::new(),
            active: Vec::new(),
            status,
        }
    }

    fn run(mut self, jobs: Receiver<Job>) {
        let mut open = true;
        loop {
            if self.active.is_empty() && self.waiting.is_empty() {
                self.publish();
                if !open {
                    return;
                }
                match jobs.recv() {
                    Ok(job) => self.waiting.push_back((job, Instant::now())),
                    Err(_) => return,
                }
            }
            loop {
                match jobs.try_recv() {
                    Ok(job) => self.waiting.push_back((job, Instant::now())),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.leave();
            self.admit();
            self.publish();
            if !self.active.is_empty() {
                self.step();
            }
        }
    }

    /// Sequences whose caller cancelled or stopped listening leave, freeing their blocks;
    /// waiting jobs cancelled before their turn are dropped.
    fn leave(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].job.cancel.load(Ordering::Relaxed) {
                let gone = self.active.swap_remove(i);
                self.pool.release(gone.seq);
            } else {
                i += 1;
            }
        }
        self.waiting
            .retain(|(job, _)| !job.cancel.load(Ordering::Relaxed));
    }

    /// Starts waiting jobs in arrival order while a slot and their cache are free.
    fn admit(&mut self) {
        while self.active.len() < self.capacity {
            let Some((job, _)) = self.waiting.front() else {
                return;
            };
            let positions = job.tokens.len() + job.max_tokens;
            if !self.pool.could_hold(positions) {
                let (job, _) = self.waiting.pop_front().expect("a front");
                let _ = job.events.send(Event::Failed(format!(
                    "the prompt and answer need {positions} positions of KV cache, more than the {} the memory budget holds; raise the resident-memory budget or lower max_tokens",
                    self.pool.usage().capacity_blocks * joule_infer::kv::BLOCK
                )));
                continue;
            }
            let Some(seq) = self.pool.admit(&job.tokens, positions) else {
                // The first in line waits for room; later ones wait behind it (no starving).
                return;
            };
            let (job, queued) = self.waiting.pop_front().expect("a front");
            let cached = seq.cached_tokens();
            let admitted = job.events.send(Event::Admitted {
                queue_s: queued.elapsed().as_secs_f64(),
                cached_tokens: cached,
            });
            if admitted.is_err() {
                self.pool.release(seq);
                continue;
            }
            let sampler = LogitsProcessor::from_sampling(job.seed, job.sampling.clone());
            self.active.push(Active {
                fed: seq.len(),
                seq,
                next: None,
                generated: 0,
                sampler,
                job,
            });
        }
    }

    /// One forward pass over every active sequence, then one sampled token for each whose
    /// prompt is done.
    fn step(&mut self) {
        let mut budget = PREFILL_CHUNK;
        // (index into `active`, tokens this step, whether its logits are sampled).
        let mut plan = Vec::with_capacity(self.active.len());
        for (i, a) in self.active.iter().enumerate() {
            if let Some(t) = a.next {
                plan.push((i, vec![t], true));
            } else if budget > 0 {
                let end = (a.fed + budget).min(a.job.tokens.len());
                budget -= end - a.fed;
                plan.push((
                    i,
                    a.job.tokens[a.fed..end].to_vec(),
                    end == a.job.tokens.len(),
                ));
            }
        }
        let vocab = self.model.config.vocab;
        let result = {
            let mut picked: Vec<Option<&mut Active>> = self.active.iter_mut().map(Some).collect();
            let mut feeds: Vec<Feed<'_>> = Vec::with_capacity(plan.len());
            for (i, tokens, _) in &plan {
                let a = picked[*i].take().expect("each sequence once");
                feeds.push(Feed {
                    seq: &mut a.seq,
                    tokens,
                });
            }
            let model = &mut self.model;
            let pool = &mut self.pool;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                model.forward_batch(pool, &mut feeds).map(<[f32]>::to_vec)
            }))
        };
        let mut logits = match result {
            Ok(Ok(logits)) => logits,
            Ok(Err(e)) => return self.fail_all(&e.to_string()),
            Err(_) => return self.fail_all("the forward pass panicked"),
        };
        let mut done = Vec::new();
        for (row, (i, tokens, sample)) in plan.iter().enumerate() {
            let a = &mut self.active[*i];
            if a.next.take().is_none() {
                a.fed += tokens.len();
            }
            if !sample {
                continue;
            }
            let row = &mut logits[row * vocab..(row + 1) * vocab];
            let sampled =
                super::constrain::sample(a.job.guide.as_mut(), row, &mut a.sampler, a.job.logprobs);
            let (token, logprob) = match sampled {
                Ok(t) => t,
                Err(e) => {
                    let _ = a.job.events.send(Event::Failed(e.to_string()));
                    done.push(*i);
                    continue;
                }
            };
            a.generated += 1;
            let listening = a.job.events.send(Event::Token(token, logprob)).is_ok();
            if !listening || a.generated >= a.job.max_tokens || a.job.stop_ids.contains(&token) {
                done.push(*i);
            } else {
                a.next = Some(token);
            }
        }
        done.sort_unstable();
        for i in done.into_iter().rev() {
            let gone = self.active.swap_remove(i);
            self.pool.release(gone.seq);
        }
    }

    fn fail_all(&mut self, why: &str) {
        tracing::error!(
            why,
            "a batched step failed; its sequences end with the error"
        );
        for a in self.active.drain(..) {
            let _ = a.job.events.send(Event::Failed(why.to_string()));
            self.pool.release(a.seq);
        }
    }

    fn publish(&self) {
        let u = self.pool.usage();
        let mut s = self.status.status.lock().unwrap_or_else(|e| e.into_inner());
        let now = EngineStatus {
            batch_capacity: self.capacity,
            active: self.active.len(),
            waiting: self.waiting.len(),
            kv_budget_bytes: u.budget_bytes,
            kv_block_bytes: u.block_bytes,
            kv_capacity_blocks: u.capacity_blocks,
            kv_committed_blocks: u.committed_blocks,
            kv_cached_blocks: u.cached_blocks,
            prefix_hits: u.prefix_hits,
            evictions: u.evictions,
        };
        if *s != now {
            *s = now;
            self.status.changed.notify_all();
        }
    }
}
