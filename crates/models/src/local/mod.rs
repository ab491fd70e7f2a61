//! Local inference with candle: GGUF models from the catalog on this machine's CPU, or on an
//! NVIDIA GPU when joule is built with the `cuda` feature.
//!
//! Loading a model costs seconds, so loaded models stay resident and are shared. On the CPU's
//! fast path a model's requests are batched: one engine thread steps all of them together
//! ([`batcher`]), with a KV pool and a prefix cache under the memory budget. The reference
//! engines (candle's models, and the GPU) hold one KV cache behind a lock, and requests queue
//! on it in turn. Memory is bounded by a least-recently-used budget over loaded models' file
//! sizes.

pub mod batcher;
pub mod chat;
pub mod constrain;
pub mod engine;
pub mod generate;
pub mod logprobs;
pub mod tokenizer;
pub mod tools;

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::quantized::gguf_file;
use joule_call::{Answer, Backend, Call, CallError, CallFuture, Cancel, OnTokens, Site};
use joule_planner::catalog::Catalog;

use crate::store::{ModelError, ModelStore};
pub use batcher::EngineStatus;
use batcher::{Batcher, Event, Job};
pub use chat::Message;
pub use constrain::Grammar;
use engine::Engine;
pub use engine::{EngineKind, LoadOptions};
pub use generate::{FinishReason, Flow, Generation, Prepared, Prompt, Request};
use tokenizer::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("unknown model `{0}`{1}")]
    UnknownModel(String, String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("unsupported model file: {0}")]
    Format(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("{0}")]
    Request(String),
    #[error(
        "the prompt is {prompt} tokens and up to {max_tokens} more were asked for, but `{model}` holds {context}; shorten the prompt or lower max_tokens"
    )]
    ContextLength {
        model: String,
        prompt: usize,
        max_tokens: usize,
        context: usize,
    },
    #[error("device: {0}")]
    Device(String),
    #[error("inference: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Picks the candle device for a catalog device id (`cpu`, `cuda:N`) or, for `None`, the best
/// one this binary and machine have.
pub fn device(id: Option<&str>) -> Result<candle_core::Device, LocalError> {
    match id {
        None => {
            #[cfg(feature = "cuda")]
            if candle_core::utils::cuda_is_available() {
                return candle_core::Device::new_cuda(0)
                    .map_err(|e| LocalError::Device(e.to_string()));
            }
            Ok(candle_core::Device::Cpu)
        }
        Some("cpu") => Ok(candle_core::Device::Cpu),
        Some(other) => {
            let Some(ordinal) = other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
            else {
                return Err(LocalError::Device(format!(
                    "`{other}` is not a local device; use `cpu` or `cuda:N`"
                )));
            };
            cuda(ordinal)
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<candle_core::Device, LocalError> {
    candle_core::Device::new_cuda(ordinal)
        .map_err(|e| LocalError::Device(format!("cannot open cuda:{ordinal}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda(ordinal: usize) -> Result<candle_core::Device, LocalError> {
    Err(LocalError::Device(format!(
        "cuda:{ordinal} asked for, but this joule was built without the `cuda` feature; rebuild with `cargo build --release --features cuda`"
    )))
}

/// A model in memory, ready to generate.
pub struct LoadedModel {
    pub id: String,
    pub tokenizer: Tokenizer,
    template: chat::ChatTemplate,
    constrainer: constrain::Constrainer,
    /// Tokens of prompt plus answer the model can hold.
    pub context: usize,
    pub device: candle_core::Device,
    /// Seconds it took to load.
    pub load_s: f64,
    /// Size of the weights file; what the LRU budget counts.
    pub bytes: u64,
    runner: Runner,
}

/// How a model's requests get the engine.
enum Runner {
    /// Together, stepped by the model's engine thread (the fast path).
    Batched(Batcher),
    /// One at a time (candle's models).
    Exclusive(Box<Mutex<Engine>>),
}

/// Positions of KV cache a model's pool is sized for at most: its batch at 2,048 positions
/// each, or one sequence at its full context, whichever is more. The pool allocates blocks
/// as they are used, so this bounds what the prefix cache may keep, not what a load costs.
fn kv_positions(batch: usize, context: usize) -> usize {
    (batch * 2048).max(context)
}

/// Ends a batched sequence when its caller is done with it, however that happens (the answer
/// complete, a stop string, an error, a panic).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl LoadedModel {
    /// Reads a GGUF file: metadata, tokenizer, chat template and weights.
    pub fn load(
        id: &str,
        path: &std::path::Path,
        device: &candle_core::Device,
        options: LoadOptions,
    ) -> Result<Self, LocalError> {
        let started = Instant::now();
        let file = File::open(path).map_err(|e| {
            LocalError::Model(ModelError::Io {
                context: format!("opening {}", path.display()),
                source: e,
            })
        })?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let content = gguf_file::Content::read(&mut reader).map_err(|e| {
            LocalError::Format(format!("{} is not a GGUF file: {e}", path.display()))
        })?;
        let tokenizer = Tokenizer::from_gguf(&content)?;
        let name = |id: Option<u32>| {
            id.and_then(|i| tokenizer.token(i))
                .unwrap_or("")
                .to_string()
        };
        let template = chat::ChatTemplate::new(
            content
                .metadata
                .get("tokenizer.chat_template")
                .and_then(|v| v.to_string().ok())
                .map(String::as_str),
            name(tokenizer.bos),
            name(tokenizer.eos),
        )?;
        let context = Engine::context(&content)?;
        let runner = match Engine::load(content, &mut reader, path, device, options)? {
            Engine::Fast(model) => {
                let per_position = model.kv_bytes_per_position();
                let budget = options
                    .memory_bytes
                    .saturating_sub(bytes)
                    .min(kv_positions(options.batch, context) as u64 * per_position);
                Runner::Batched(
                    Batcher::start(*model, budget, options.batch.max(1), id).map_err(|e| {
                        LocalError::Request(format!("cannot start the engine of `{id}`: {e}"))
                    })?,
                )
            }
            other => Runner::Exclusive(Box::new(Mutex::new(other))),
        };
        let mut model = Self {
            id: id.to_string(),
            tokenizer,
            template,
            constrainer: constrain::Constrainer::new(),
            context,
            device: device.clone(),
            load_s: 0.0,
            bytes,
            runner,
        };
        model.warm_up()?;
        model.load_s = started.elapsed().as_secs_f64();
        Ok(model)
    }

    /// Runs one tiny generation (a two-token prompt, one decoded token) so that the first real
    /// request does not pay for first-touch work (page faults in the weights, allocator growth,
    /// kernel set-up): that cost belongs to loading, where the plan counts it, not to whichever
    /// step happens to call the model first.
    fn warm_up(&self) -> Result<(), LocalError> {
        let id = self.tokenizer.bos.or(self.tokenizer.eos).unwrap_or(0);
        let request = Request {
            prompt: Prompt::Tokens(vec![id, id]),
            ignore_eos: true,
            ..Request::text("", 2)
        };
        self.generate(&request, &mut |_| Flow::Continue).map(|_| ())
    }

    /// The prompt text a chat turns into, with the model's turn markers.
    pub fn render_chat(&self, messages: &[Message]) -> Result<String, LocalError> {
        self.template.render(messages)
    }

    /// Generates, waiting in turn if another request holds the model. `on_text` receives the
    /// answer piece by piece as it is decoded; returning [`Flow::Stop`] ends the generation.
    pub fn generate(
        &self,
        request: &Request,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Generation, LocalError> {
        let prepared = self.prepare(request)?;
        self.generate_prepared(&prepared, request, on_text)
    }

    /// Renders and tokenizes the prompt and checks it fits, without waiting for the model.
    pub fn prepare(&self, request: &Request) -> Result<generate::Prepared, LocalError> {
        generate::prepare(self, request)
    }

    /// [`LoadedModel::generate`] for a request already prepared.
    pub fn generate_prepared(
        &self,
        prepared: &generate::Prepared,
        request: &Request,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Generation, LocalError> {
        let waited = Instant::now();
        let batcher = match &self.runner {
            Runner::Batched(b) => b,
            Runner::Exclusive(engine) => {
                // A panic mid-generation leaves a KV cache that the next request overwrites
                // from position 0, so a poisoned lock is safe to take.
                let mut engine = engine.lock().unwrap_or_else(|e| e.into_inner());
                let queue_s = waited.elapsed().as_secs_f64();
                let mut generation = generate::run(self, &mut engine, prepared, request, on_text)?;
                generation.queue_s = queue_s;
                return Ok(generation);
            }
        };
        let positions = prepared.tokens.len() + prepared.max_tokens;
        if positions > batcher.max_positions() {
            return Err(LocalError::Request(format!(
                "the prompt ({} tokens) and max_tokens ({}) need {positions} positions of KV cache; `{}` can hold {} within the memory budget",
                prepared.tokens.len(),
                prepared.max_tokens,
                self.id,
                batcher.max_positions()
            )));
        }
        let (events, answers) = std::sync::mpsc::channel();
        let cancel = request.cancel.clone().unwrap_or_default();
        let _ends = CancelOnDrop(cancel.clone());
        let job = Job {
            tokens: prepared.tokens.clone(),
            max_tokens: prepared.max_tokens,
            sampling: request.sampling(),
            seed: request.seed,
            stop_ids: self.stop_ids(request).to_vec(),
            guide: prepared.guide.clone(),
            logprobs: request.logprobs,
            events,
            cancel: cancel.clone(),
        };
        let stopped = || LocalError::Request(format!("the engine of `{}` has stopped", self.id));
        if !batcher.submit(job) {
            return Err(stopped());
        }
        let (queue_s, cached) = match answers.recv() {
            Ok(Event::Admitted {
                queue_s,
                cached_tokens,
            }) => (queue_s, cached_tokens),
            Ok(Event::Failed(why)) => return Err(LocalError::Request(why)),
            Err(_) if cancel.load(std::sync::atomic::Ordering::Relaxed) => {
                return Err(LocalError::Request(
                    "cancelled while it waited for room in the engine".into(),
                ));
            }
            Ok(Event::Token(..)) | Err(_) => return Err(stopped()),
        };
        let started = Instant::now();
        let mut decoder = generate::Decoder::new(self, prepared, request, on_text, started);
        let mut prefill_s = None;
        loop {
            match answers.recv() {
                Ok(Event::Token(token, logprob)) => {
                    prefill_s.get_or_insert_with(|| started.elapsed().as_secs_f64());
                    if !decoder.push(token, logprob)? {
                        break;
                    }
                }
                Ok(Event::Failed(why)) => return Err(LocalError::Request(why)),
                Ok(Event::Admitted { .. }) => return Err(stopped()),
                // The engine let the sequence go: its last token was sent.
                Err(_) => break,
            }
        }
        let mut generation = decoder.finish(prepared.tokens.len(), prefill_s.unwrap_or(0.0));
        generation.queue_s = queue_s;
        generation.cached_prompt_tokens = cached;
        Ok(generation)
    }

    /// The tokens that end an answer for this request (none when it ignores end-of-sequence).
    pub(crate) fn stop_ids(&self, request: &Request) -> &[u32] {
        if request.ignore_eos {
            &[]
        } else {
            &self.tokenizer.stop_ids
        }
    }

    /// The batching engine's state, for the fast path's models.
    pub fn engine_status(&self) -> Option<EngineStatus> {
        match &self.runner {
            Runner::Batched(b) => Some(b.status()),
            Runner::Exclusive(_) => None,
        }
    }

    /// Waits up to `timeout` for the batching engine to publish a status `ready` accepts (see
    /// [`Batcher::wait_for`]); `None` for a model without one.
    pub fn wait_for_engine(
        &self,
        timeout: std::time::Duration,
        ready: impl Fn(&EngineStatus) -> bool,
    ) -> Option<EngineStatus> {
        match &self.runner {
            Runner::Batched(b) => Some(b.wait_for(timeout, ready)),
            Runner::Exclusive(_) => None,
        }
    }

    /// Requests that may run on this model at once.
    pub fn batch_capacity(&self) -> usize {
        match &self.runner {
            Runner::Batched(b) => b.status().batch_capacity,
            Runner::Exclusive(_) => 1,
        }
    }
}

struct Slot {
    model: Option<Arc<LoadedModel>>,
    last_used: u64,
}

/// The resident models of one device, loaded on first use and evicted least recently used.
/// Clones share the resident models (a clone is what a blocking inference thread holds).
#[derive(Clone)]
pub struct LocalBackend {
    catalog: Arc<Catalog>,
    store: ModelStore,
    device: candle_core::Device,
    device_id: String,
    budget_bytes: u64,
    options: LoadOptions,
    slots: Arc<Mutex<HashMap<String, Arc<Mutex<Slot>>>>>,
    clock: Arc<std::sync::atomic::AtomicU64>,
}

impl LocalBackend {
    pub fn new(
        catalog: Arc<Catalog>,
        store: ModelStore,
        device_id: Option<&str>,
        budget_bytes: u64,
        options: LoadOptions,
    ) -> Result<Self, LocalError> {
        let device = device(device_id)?;
        let device_id = match &device {
            candle_core::Device::Cpu => "cpu".to_string(),
            _ => device_id.unwrap_or("cuda:0").to_string(),
        };
        Ok(Self {
            catalog,
            store,
            device,
            device_id,
            budget_bytes,
            // The KV pools share the resident-memory budget with the weights.
            options: LoadOptions {
                memory_bytes: options.memory_bytes.min(budget_bytes),
                ..options
            },
            slots: Arc::new(Mutex::new(HashMap::new())),
            clock: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        })
    }

    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Catalog models this backend can run: those with a local source.
    pub fn local_models(&self) -> impl Iterator<Item = &joule_planner::catalog::Model> {
        self.catalog.models.iter().filter(|m| m.source.is_some())
    }

    /// The model cache this backend loads from.
    pub fn store(&self) -> &ModelStore {
        &self.store
    }

    /// Ids of the models in memory now.
    pub fn resident(&self) -> Vec<String> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<String> = slots
            .iter()
            // A slot is locked only while its model loads (requests take the `Arc` and let
            // go), so a locked slot is not resident yet.
            .filter(|(_, s)| s.try_lock().map(|s| s.model.is_some()).unwrap_or(false))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The batching engines of the resident models: batch capacity, active and waiting
    /// requests, and the KV pool (budget, blocks committed and cached, prefix hits).
    pub fn engines(&self) -> std::collections::BTreeMap<String, EngineStatus> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .filter_map(|(id, s)| {
                let s = s.try_lock().ok()?;
                Some((id.clone(), s.model.as_ref()?.engine_status()?))
            })
            .collect()
    }

    /// The loaded model, loading it first if needed (the returned seconds are the load time
    /// this call paid, 0 when it was resident). Blocks; call from a blocking thread.
    pub fn model(&self, id: &str) -> Result<(Arc<LoadedModel>, f64), LocalError> {
        let model = self.catalog.model(id).ok_or_else(|| {
            let known: Vec<&str> = self.local_models().map(|m| m.id.as_str()).collect();
            LocalError::UnknownModel(
                id.to_string(),
                format!("; local models: {}", known.join(", ")),
            )
        })?;
        let path = self.store.require(model)?;
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .entry(id.to_string())
                .or_insert_with(|| {
                    Arc::new(Mutex::new(Slot {
                        model: None,
                        last_used: 0,
                    }))
                })
                .clone()
        };
        let tick = self
            .clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
        guard.last_used = tick;
        if let Some(loaded) = &guard.model {
            return Ok((loaded.clone(), 0.0));
        }
        tracing::info!(model = id, device = %self.device_id, path = %path.display(), "loading");
        let loaded = Arc::new(LoadedModel::load(id, &path, &self.device, self.options)?);
        tracing::info!(model = id, seconds = loaded.load_s, "loaded");
        guard.model = Some(loaded.clone());
        drop(guard);
        self.evict(id);
        Ok((loaded.clone(), loaded.load_s))
    }

    /// Drops least recently used models (other than `keep`) until the budget holds. A model
    /// still in use stays alive through its `Arc` until its request ends.
    fn evict(&self, keep: &str) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut loaded: Vec<(u64, u64, &String, &Arc<Mutex<Slot>>)> = slots
            .iter()
            .filter_map(|(id, slot)| {
                let s = slot.try_lock().ok()?;
                s.model.as_ref().map(|m| (s.last_used, m.bytes, id, slot))
            })
            .collect();
        let mut total: u64 = loaded.iter().map(|l| l.1).sum();
        loaded.sort_by_key(|l| l.0);
        for (_, bytes, id, slot) in loaded {
            if total <= self.budget_bytes {
                break;
            }
            if id == keep {
                continue;
            }
            if let Ok(mut s) = slot.try_lock() {
                tracing::info!(model = %id, "evicting to stay within the memory budget");
                s.model = None;
                total -= bytes;
            }
        }
    }

    /// Loads (if needed) and generates, reporting load time in the result.
    pub fn generate(
        &self,
        id: &str,
        request: &Request,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Generation, LocalError> {
        let (model, load_s) = self.model(id)?;
        let mut generation = model.generate(request, on_text)?;
        generation.load_s = load_s;
        Ok(generation)
    }
}

impl LocalBackend {
    /// One model call of a step: a system and a user message through the model's own chat
    /// template, generated on a blocking thread (inference is CPU- or GPU-bound), stopped at
    /// the next token once `cancel` fires.
    async fn llm(
        &self,
        call: &Call,
        cancel: &Cancel,
        on_tokens: &OnTokens,
    ) -> Result<Answer, CallError> {
        let Call::Llm(c) = call else {
            return Err(CallError::permanent(
                "the local backend was handed a tool call",
            ));
        };
        let mut request = request_of(c);
        // Reaches a request still waiting for room in the engine, which no token callback
        // would see until it was admitted.
        let give_up = Arc::new(AtomicBool::new(false));
        request.cancel = Some(give_up.clone());
        let model = c.model.clone();
        let flag = cancel.clone();
        let progress = on_tokens.clone();
        let local = self.clone();
        let mut task = tokio::task::spawn_blocking(move || {
            let mut pieces = 0;
            local.generate(&model, &request, &mut |_| {
                pieces += 1;
                progress(pieces);
                if flag.is_cancelled() {
                    Flow::Stop
                } else {
                    Flow::Continue
                }
            })
        });
        let joined = tokio::select! {
            joined = &mut task => joined,
            () = cancel.cancelled() => {
                give_up.store(true, std::sync::atomic::Ordering::Relaxed);
                task.await
            }
        };
        if cancel.is_cancelled() {
            return Err(CallError::transient("cancelled"));
        }
        let generation = joined
            .map_err(|e| CallError::permanent(format!("inference task failed: {e}")))?
            .map_err(|e| CallError::permanent(e.to_string()))?;
        if generation.finish_reason == FinishReason::Cancelled {
            return Err(CallError::transient("cancelled"));
        }
        // An agent's answer is a reply, or calls of its tools (their ids are the executor's).
        let (text, tool_calls) = if c.tools.is_empty() {
            (generation.text, Vec::new())
        } else {
            let (content, calls) = tools::parse(&generation.text);
            let calls = calls
                .into_iter()
                .enumerate()
                .map(|(i, call)| joule_call::ToolUse {
                    id: format!("call_{i}"),
                    name: call.name,
                    arguments: call.arguments,
                })
                .collect();
            (content.unwrap_or_default(), calls)
        };
        Ok(Answer {
            text,
            tool_calls,
            tokens_in: generation.prompt_tokens as u64,
            tokens_out: generation.completion_tokens as u64,
            tokens_cached: generation.cached_prompt_tokens as u64,
            ttft_s: Some(generation.ttft_s),
            load_s: generation.load_s,
            ..Answer::default()
        })
    }
}

/// A step's model call as a local generation: the conversation through the model's own chat
/// template (tools in its tools section), and the answer's form enforced by its grammar.
fn request_of(c: &joule_call::LlmCall) -> Request {
    let mut messages = Vec::new();
    if let Some(system) = &c.system {
        messages.push(Message::new("system", system.clone()));
    }
    messages.push(Message::new("user", c.prompt.clone()));
    for turn in &c.turns {
        messages.push(match turn {
            joule_call::Turn::Assistant {
                content,
                tool_calls,
            } => Message {
                tool_calls: tool_calls
                    .iter()
                    .map(|t| chat::MessageToolCall {
                        id: t.id.clone(),
                        kind: "function".into(),
                        function: chat::CalledFunction {
                            name: t.name.clone(),
                            arguments: t.arguments.clone(),
                        },
                    })
                    .collect(),
                ..Message::new("assistant", content.clone())
            },
            joule_call::Turn::Tool { id, content } => Message {
                tool_call_id: Some(id.clone()),
                ..Message::new("tool", content.clone())
            },
        });
    }
    let mut request = Request::chat(messages, c.max_tokens as usize);
    request.temperature = c.temperature;
    request.seed = c.seed;
    let reply = c.output.as_ref().map(|o| match o {
        joule_call::Constraint::OneOf(words) => Grammar::one_of(words),
        joule_call::Constraint::JsonSchema(schema) => Grammar::json_schema(schema),
    });
    let after_calls = c.turns.iter().any(
        |t| matches!(t, joule_call::Turn::Assistant { tool_calls, .. } if !tool_calls.is_empty()),
    );
    if c.tools.is_empty() && after_calls {
        // An agent's last turn: the model has used tools and must now answer, but a small
        // model writes one more call as its reply unless the grammar says otherwise.
        request.grammar = Some(tools::reply_only(reply.as_ref()));
    } else if c.tools.is_empty() {
        request.grammar = reply;
    } else {
        let functions: Vec<tools::Function> = c
            .tools
            .iter()
            .map(|f| tools::Function {
                name: f.name.clone(),
                parameters: f.parameters.clone(),
            })
            .collect();
        request.tools = c
            .tools
            .iter()
            .map(|f| serde_json::json!({"type": "function", "function": f}))
            .collect();
        request.grammar = Some(tools::grammar(
            &functions,
            &tools::Choice::Auto,
            true,
            reply.as_ref(),
        ));
    }
    request
}

impl Backend for LocalBackend {
    fn call<'a>(
        &'a self,
        _site: &'a Site,
        call: &'a Call,
        cancel: &'a Cancel,
        on_tokens: &'a OnTokens,
    ) -> CallFuture<'a> {
        Box::pin(self.llm(call, cancel, on_tokens))
    }
}
