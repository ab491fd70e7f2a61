//! One generation: prompt in, text out, with the timings the planner and the profiler live on.

use std::time::Instant;

use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::{Deserialize, Serialize};

use super::LocalError;
use super::chat::Message;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::constrain::{Grammar, Guide};
use super::logprobs::TokenLogprob;
use super::tokenizer::TextStream;

/// What to generate. Greedy by default, so the same request gives the same answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Either a chat (rendered with the model's template) or raw prompt text.
    pub prompt: Prompt,
    pub max_tokens: usize,
    /// 0 (the default) means greedy decoding.
    #[serde(default)]
    pub temperature: f64,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub seed: u64,
    /// Generation ends before any of these strings; they are not part of the answer.
    #[serde(default)]
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks measure a fixed number of tokens).
    #[serde(default)]
    pub ignore_eos: bool,
    /// `max_tokens` is a default, not the caller's wish: shrink it to what the context has
    /// left instead of refusing the request.
    #[serde(default)]
    pub fit_context: bool,
    /// Functions the model is told it may call (OpenAI `tools` entries), rendered into a chat
    /// prompt by the model's template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<serde_json::Value>,
    /// What the answer must match; generated under a token mask so that it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grammar: Option<Grammar>,
    /// Log-probabilities of each answer token and of its step's `n` likeliest tokens
    /// ([`super::logprobs`]); `None` costs nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<usize>,
    /// Set by the caller to give the request up, including while it waits for room in a
    /// batching engine (a callback only runs once tokens come); the engine drops it at its
    /// next step.
    #[serde(skip)]
    pub cancel: Option<Arc<AtomicBool>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prompt {
    Chat(Vec<Message>),
    Text(String),
    /// Token ids as they are; benchmarks and the profiler use this to control prompt length.
    Tokens(Vec<u32>),
}

impl Request {
    pub fn chat(messages: Vec<Message>, max_tokens: usize) -> Self {
        Self {
            prompt: Prompt::Chat(messages),
            max_tokens,
            temperature: 0.0,
            top_p: None,
            seed: 0,
            stop: Vec::new(),
            ignore_eos: false,
            fit_context: false,
            tools: Vec::new(),
            grammar: None,
            logprobs: None,
            cancel: None,
        }
    }

    pub fn text(text: impl Into<String>, max_tokens: usize) -> Self {
        Self {
            prompt: Prompt::Text(text.into()),
            ..Self::chat(Vec::new(), max_tokens)
        }
    }

    pub(crate) fn sampling(&self) -> Sampling {
        if self.temperature <= 0.0 {
            Sampling::ArgMax
        } else {
            match self.top_p {
                Some(p) if p > 0.0 && p < 1.0 => Sampling::TopP {
                    p,
                    temperature: self.temperature,
                },
                _ => Sampling::All {
                    temperature: self.temperature,
                },
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The caller stopped listening (a closed stream).
    Cancelled,
}

/// What a generation produced and how long each phase took (all times from the clock).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generation {
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache instead of a prefill.
    #[serde(default)]
    pub cached_prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Seconds from the request reaching the model to the first generated token.
    pub ttft_s: f64,
    pub prefill_tokens_per_s: f64,
    /// Tokens after the first, per second of decoding; 0 when fewer than two were generated.
    pub decode_tokens_per_s: f64,
    /// Seconds the generation took, excluding any wait for the model or its loading.
    pub wall_s: f64,
    /// Seconds spent loading the model for this request (0 when it was resident).
    pub load_s: f64,
    /// Seconds waited for the model while other requests used it.
    pub queue_s: f64,
    /// Each answer token's log-probabilities, when the request asked for them (end tokens
    /// and tokens after a stop string are not part of the answer and not listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<TokenLogprob>,
}

/// Whether the caller wants more tokens.
pub enum Flow {
    Continue,
    Stop,
}

/// Finds the earliest stop string in `text`, and how much of the end might still grow into one.
fn scan_stops(text: &str, stops: &[String]) -> (Option<usize>, usize) {
    let hit = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min();
    let held = stops
        .iter()
        .map(|s| {
            (1..s.len())
                .rev()
                .find(|&k| s.is_char_boundary(k) && text.ends_with(&s[..k]))
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    (hit, held)
}

/// A request turned into tokens and checked against the model's context, before it waits for
/// the model: a bad request fails at once instead of after its turn in the queue.
pub struct Prepared {
    pub tokens: Vec<u32>,
    /// The answer's length limit, after `fit_context`.
    pub max_tokens: usize,
    /// The request's grammar, compiled; each generation steps a copy of it.
    pub guide: Option<Guide>,
}

pub(crate) fn prepare(
    model: &super::LoadedModel,
    request: &Request,
) -> Result<Prepared, LocalError> {
    let tokens = match &request.prompt {
        Prompt::Chat(messages) => {
            let text = model.template.render_with_tools(messages, &request.tools)?;
            // The one place to see what a model was really shown (`RUST_LOG=joule_models=trace`).
            tracing::trace!(prompt = %text.escape_debug(), "rendered chat");
            model.tokenizer.encode(&text)?
        }
        Prompt::Text(_) | Prompt::Tokens(_) if !request.tools.is_empty() => {
            return Err(LocalError::Request(
                "tools are offered through a chat template; send messages, not a prompt".into(),
            ));
        }
        Prompt::Text(text) => model.tokenizer.encode(text)?,
        Prompt::Tokens(ids) => {
            let vocab = model.tokenizer.vocab_size();
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(LocalError::Request(format!(
                    "token id {bad} is outside the vocabulary of {vocab}"
                )));
            }
            ids.clone()
        }
    };
    if tokens.is_empty() {
        return Err(LocalError::Request("the prompt is empty".into()));
    }
    if request.max_tokens == 0 {
        return Err(LocalError::Request("max_tokens must be at least 1".into()));
    }
    let room = model.context.saturating_sub(tokens.len());
    let max_tokens = if request.fit_context {
        request.max_tokens.min(room)
    } else {
        request.max_tokens
    };
    if max_tokens == 0 || max_tokens > room {
        return Err(LocalError::ContextLength {
            model: model.id.clone(),
            prompt: tokens.len(),
            max_tokens: request.max_tokens,
            context: model.context,
        });
    }
    let guide = match &request.grammar {
        None => None,
        Some(_) if request.ignore_eos => {
            return Err(LocalError::Request(
                "an output constraint ends the answer where its grammar does; it cannot be combined with ignore_eos".into(),
            ));
        }
        Some(grammar) => Some(model.constrainer.guide(&model.tokenizer, grammar)?),
    };
    Ok(Prepared {
        tokens,
        max_tokens,
        guide,
    })
}

/// Turns sampled tokens into the answer: text pieces handed on as they become safe (a stop
/// string's possible beginning is held back), the end found (end-of-sequence token, stop
/// string, length, a caller that stops listening), and the clock read. Both the exclusive
/// loop below and the batched engine feed it, so they end answers the same way.
pub(crate) struct Decoder<'a> {
    model: &'a super::LoadedModel,
    request: &'a Request,
    max_tokens: usize,
    on_text: &'a mut dyn FnMut(&str) -> Flow,
    stop_ids: &'a [u32],
    stream: TextStream,
    text: String,
    emitted: usize,
    generated: usize,
    finish: FinishReason,
    started: Instant,
    first_token_at: Option<f64>,
    decode_started: Option<Instant>,
    logprobs: Vec<TokenLogprob>,
}

impl<'a> Decoder<'a> {
    /// `started` is when the model began on this request (after any wait for it).
    pub(crate) fn new(
        model: &'a super::LoadedModel,
        prepared: &Prepared,
        request: &'a Request,
        on_text: &'a mut dyn FnMut(&str) -> Flow,
        started: Instant,
    ) -> Self {
        Self {
            model,
            request,
            max_tokens: prepared.max_tokens,
            on_text,
            stop_ids: model.stop_ids(request),
            stream: TextStream::new(),
            text: String::new(),
            emitted: 0,
            generated: 0,
            finish: FinishReason::Length,
            started,
            first_token_at: None,
            decode_started: None,
            logprobs: Vec::new(),
        }
    }

    /// Takes the next sampled token (and its log-probabilities, if asked for); `false` once
    /// the answer is complete.
    pub(crate) fn push(
        &mut self,
        token: u32,
        logprob: Option<TokenLogprob>,
    ) -> Result<bool, LocalError> {
        self.generated += 1;
        if self.first_token_at.is_none() {
            self.first_token_at = Some(self.started.elapsed().as_secs_f64());
            self.decode_started = Some(Instant::now());
        }
        if self.stop_ids.contains(&token) {
            self.finish = FinishReason::Stop;
            return Ok(false);
        }
        let piece = self.stream.push(&self.model.tokenizer, token)?;
        let before = self.text.len();
        self.text.push_str(&piece);
        let (hit, held) = scan_stops(&self.text, &self.request.stop);
        if let Some(at) = hit {
            self.text.truncate(at);
        }
        // A token the stop string begins in is not part of the answer.
        if let Some(lp) = logprob
            && hit.is_none_or(|at| at > before)
        {
            self.logprobs.push(lp.spelled(&self.model.tokenizer));
        }
        let safe = if hit.is_some() {
            self.text.len()
        } else {
            self.text.len() - held
        };
        if safe > self.emitted {
            let flow = (self.on_text)(&self.text[self.emitted..safe]);
            self.emitted = safe;
            if matches!(flow, Flow::Stop) {
                self.finish = FinishReason::Cancelled;
                return Ok(false);
            }
        }
        if hit.is_some() {
            self.finish = FinishReason::Stop;
            return Ok(false);
        }
        Ok(self.generated < self.max_tokens)
    }

    /// The answer, once [`Decoder::push`] said it is complete (or the tokens ran out).
    pub(crate) fn finish(self, prompt_tokens: usize, prefill_s: f64) -> Generation {
        if self.emitted < self.text.len() && self.finish != FinishReason::Cancelled {
            (self.on_text)(&self.text[self.emitted..]);
        }
        let wall_s = self.started.elapsed().as_secs_f64();
        let decode_s = self
            .decode_started
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let generated = self.generated;
        Generation {
            text: self.text,
            finish_reason: self.finish,
            prompt_tokens,
            cached_prompt_tokens: 0,
            completion_tokens: generated,
            ttft_s: self.first_token_at.unwrap_or(wall_s),
            prefill_tokens_per_s: prompt_tokens as f64 / prefill_s.max(1e-9),
            decode_tokens_per_s: if generated > 1 && decode_s > 0.0 {
                (generated - 1) as f64 / decode_s
            } else {
                0.0
            },
            wall_s,
            load_s: 0.0,
            queue_s: 0.0,
            logprobs: self.logprobs,
        }
    }
}

/// Runs the decoding loop on a model the caller holds exclusively (the reference engines:
/// candle's models, on the CPU for comparison and on GPUs).
pub(crate) fn run(
    model: &super::LoadedModel,
    engine: &mut super::engine::Engine,
    prepared: &Prepared,
    request: &Request,
    on_text: &mut dyn FnMut(&str) -> Flow,
) -> Result<Generation, LocalError> {
    let started = Instant::now();
    let prompt = &prepared.tokens;
    let mut sampler = LogitsProcessor::from_sampling(request.seed, request.sampling());
    let mut guide = prepared.guide.clone();
    let mut decoder = Decoder::new(model, prepared, request, on_text, started);
    let mut logits = engine.forward(prompt, 0, &model.device)?;
    let prefill_s = started.elapsed().as_secs_f64();
    let mut pos = prompt.len();
    loop {
        let (token, logprob) = if guide.is_none() && request.logprobs.is_none() {
            (sampler.sample(&logits)?, None)
        } else {
            let mut row = logits
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            super::constrain::sample(guide.as_mut(), &mut row, &mut sampler, request.logprobs)?
        };
        if !decoder.push(token, logprob)? {
            break;
        }
        logits = engine.forward(&[token], pos, &model.device)?;
        pos += 1;
    }
    Ok(decoder.finish(prompt.len(), prefill_s))
}

#[cfg(test)]
mod tests {
    use super::scan_stops;

    #[test]
    fn stops_are_found_and_their_prefixes_held_back() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(scan_stops("abc", &stops), (None, 0));
        assert_eq!(scan_stops("abc\n", &stops), (None, 1));
        assert_eq!(scan_stops("abcEN", &stops), (None, 2));
        assert_eq!(scan_stops("a\n\nb", &stops), (Some(1), 0));
        assert_eq!(scan_stops("aENDb\n\n", &stops), (Some(1), 1));
    }
}
