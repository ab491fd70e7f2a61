//! The decoder forward pass of llama- and qwen2-style models (RMSNorm, rotary positions,
//! grouped-query attention, SwiGLU), over weights read in place from the memory-mapped GGUF.
//!
//! It computes what candle-transformers' `quantized_llama` / `quantized_qwen2` compute, with
//! the same activation quantisation; only summation orders differ (attention most), so its
//! logits match theirs to quantisation noise (`executor/tests/fast_engine.rs` states how
//! close). What it does differently is
//! what costs time on a CPU: no tensor is allocated per token (every buffer is kept and reused,
//! the KV cache grows geometrically instead of being concatenated per token), the small ops
//! (norm, rotation, gate) are fused loops, the weights are never copied, and a batch of prompt
//! tokens meets each weight tile once.

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};

use crate::InferError;
use crate::kv::{BLOCK, KvPool, Sequence};
use crate::quant::{Kernels, Out, QWeight, Storage};

/// The architectures whose rotary embedding rotates halves (`neox`) rather than pairs.
fn rope_is_neox(arch: &str) -> bool {
    matches!(arch, "qwen" | "qwen2" | "qwen2moe" | "qwen3" | "qwen3moe")
}

#[derive(Debug, Clone)]
pub struct Config {
    pub arch: String,
    pub layers: usize,
    pub embd: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub eps: f32,
    pub rope_base: f32,
    pub neox: bool,
    /// Positions the model can hold.
    pub context: usize,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: QWeight,
    wk: QWeight,
    wv: QWeight,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    wo: QWeight,
    ffn_norm: Vec<f32>,
    gate: QWeight,
    up: QWeight,
    down: QWeight,
}

/// Buffers a forward pass writes, kept between calls so decoding allocates nothing.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    logits: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

pub struct Model {
    pub config: Config,
    embeddings: QWeight,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: QWeight,
    kernels: Kernels,
    scratch: Scratch,
    /// The one sequence of [`Model::forward`], in a pool of its own that holds a full
    /// context.
    solo: Option<(KvPool, Sequence)>,
}

/// One sequence's part of a batched step: the tokens it feeds this step (a whole or partial
/// prompt, or the one token it just sampled).
pub struct Feed<'a> {
    pub seq: &'a mut Sequence,
    pub tokens: &'a [u32],
}

fn meta<'a>(ct: &'a Content, key: &str) -> Result<&'a Value, InferError> {
    ct.metadata
        .get(key)
        .ok_or_else(|| InferError::Format(format!("the GGUF file has no `{key}`")))
}

fn meta_usize(ct: &Content, key: &str) -> Result<usize, InferError> {
    let v = meta(ct, key)?;
    v.to_u32()
        .map(|v| v as usize)
        .or_else(|_| v.to_u64().map(|v| v as usize))
        .map_err(|e| InferError::Format(format!("`{key}`: {e}")))
}

impl Model {
    /// Loads a GGUF file (see [`crate::quant::load`]; `huge` asks for huge pages) and reads
    /// its weights in place.
    pub fn load(path: &Path, huge: bool, kernels: Kernels) -> Result<Self, InferError> {
        let file = std::fs::File::open(path)
            .map_err(|e| InferError::Io(format!("{}: {e}", path.display())))?;
        let ct = Content::read(&mut std::io::BufReader::new(file))
            .map_err(|e| InferError::Format(format!("{}: {e}", path.display())))?;
        Self::from_content(&ct, crate::quant::load(path, huge)?, kernels)
    }

    pub fn from_content(
        ct: &Content,
        storage: Arc<dyn Storage>,
        kernels: Kernels,
    ) -> Result<Self, InferError> {
        let arch = meta(ct, "general.architecture")?
            .to_string()
            .map_err(|e| InferError::Format(e.to_string()))?
            .clone();
        if !matches!(arch.as_str(), "llama" | "qwen2") {
            return Err(InferError::Unsupported(format!("architecture `{arch}`")));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let embd = meta_usize(ct, &key("embedding_length"))?;
        let heads = meta_usize(ct, &key("attention.head_count"))?;
        let kv_heads = meta_usize(ct, &key("attention.head_count_kv")).unwrap_or(heads);
        let layers = meta_usize(ct, &key("block_count"))?;
        let eps = meta(ct, &key("attention.layer_norm_rms_epsilon"))?
            .to_f32()
            .map_err(|e| InferError::Format(e.to_string()))?;
        let rope_base = meta(ct, &key("rope.freq_base"))
            .and_then(|v| v.to_f32().map_err(|e| InferError::Format(e.to_string())))
            .unwrap_or(10000.0);
        let head_dim = embd / heads;
        if let Ok(rope_dim) = meta_usize(ct, &key("rope.dimension_count"))
            && rope_dim != head_dim
        {
            return Err(InferError::Unsupported(format!(
                "partial rotary embeddings ({rope_dim} of {head_dim} dimensions)"
            )));
        }
        if heads % kv_heads != 0 || embd % heads != 0 || head_dim % 2 != 0 {
            return Err(InferError::Format(format!(
                "{heads} heads, {kv_heads} kv heads and {embd} dimensions do not fit together"
            )));
        }
        let context = meta_usize(ct, &key("context_length")).unwrap_or(2048);

        let tensor = |name: &str| -> Result<QWeight, InferError> {
            let info = ct
                .tensor_infos
                .get(name)
                .ok_or_else(|| InferError::Format(format!("the GGUF file has no `{name}`")))?;
            let dims = info.shape.dims();
            let (rows, cols) = match dims {
                [n] => (1, *n),
                [r, c] => (*r, *c),
                _ => {
                    return Err(InferError::Unsupported(format!(
                        "`{name}` of shape {dims:?}"
                    )));
                }
            };
            QWeight::new(
                info.ggml_dtype,
                rows,
                cols,
                storage.clone(),
                (ct.tensor_data_offset + info.offset) as usize,
            )
            // Keep the kind: an unsupported format sends the caller to the reference path.
            .map_err(|e| match e {
                InferError::Unsupported(m) => InferError::Unsupported(format!("`{name}`: {m}")),
                e => InferError::Format(format!("`{name}`: {e}")),
            })
        };
        // SAFETY: each matrix is read through this one view (the embeddings, which the output
        // may share, are not prepared).
        let matrix = |name: &str| tensor(name).and_then(|t| unsafe { t.prepare(&kernels) });
        let vector = |name: &str| tensor(name).map(|t| t.to_f32());
        let optional = |name: &str| {
            ct.tensor_infos
                .contains_key(name)
                .then(|| vector(name))
                .transpose()
        };

        let embeddings = tensor("token_embd.weight")?;
        // A separate output matrix is prepared like the layers'; one tied to the embeddings
        // stays as the file has it (lookups read it too).
        let output = if ct.tensor_infos.contains_key("output.weight") {
            matrix("output.weight")?
        } else {
            embeddings.clone()
        };
        let mut blocks = Vec::with_capacity(layers);
        for i in 0..layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            blocks.push(Layer {
                attn_norm: vector(&p("attn_norm.weight"))?,
                wq: matrix(&p("attn_q.weight"))?,
                wk: matrix(&p("attn_k.weight"))?,
                wv: matrix(&p("attn_v.weight"))?,
                bq: optional(&p("attn_q.bias"))?,
                bk: optional(&p("attn_k.bias"))?,
                bv: optional(&p("attn_v.bias"))?,
                wo: matrix(&p("attn_output.weight"))?,
                ffn_norm: vector(&p("ffn_norm.weight"))?,
                gate: matrix(&p("ffn_gate.weight"))?,
                up: matrix(&p("ffn_up.weight"))?,
                down: matrix(&p("ffn_down.weight"))?,
            });
        }
        let ffn = blocks.first().map_or(0, |l| l.gate.rows);
        let config = Config {
            neox: rope_is_neox(&arch),
            arch,
            layers,
            embd,
            heads,
            kv_heads,
            head_dim,
            ffn,
            vocab: output.rows,
            eps,
            rope_base,
            context,
        };
        for (i, l) in blocks.iter().enumerate() {
            let q = heads * head_dim;
            let kv = kv_heads * head_dim;
            let shapes = [
                (&l.wq, q, embd),
                (&l.wk, kv, embd),
                (&l.wv, kv, embd),
                (&l.wo, embd, q),
                (&l.gate, ffn, embd),
                (&l.up, ffn, embd),
                (&l.down, embd, ffn),
            ];
            if shapes.iter().any(|(w, r, c)| w.rows != *r || w.cols != *c) {
                return Err(InferError::Format(format!(
                    "layer {i}'s weights do not have the shapes its metadata implies"
                )));
            }
        }
        if embeddings.cols != embd || output.cols != embd {
            return Err(InferError::Format(
                "embedding and output widths differ from the model's".into(),
            ));
        }
        Ok(Self {
            config,
            embeddings,
            layers: blocks,
            out_norm: vector("output_norm.weight")?,
            output,
            kernels,
            scratch: Scratch::default(),
            solo: None,
        })
    }

    /// Floats of keys (and of values) per position and layer: what a KV pool is sized by.
    pub fn kv_dim(&self) -> usize {
        self.config.kv_heads * self.config.head_dim
    }

    /// A KV pool for this model of at most `budget_bytes`.
    pub fn pool(&self, budget_bytes: u64) -> KvPool {
        KvPool::new(self.config.layers, self.kv_dim(), budget_bytes)
    }

    /// Bytes of KV cache one position costs.
    pub fn kv_bytes_per_position(&self) -> u64 {
        KvPool::block_bytes_for(self.config.layers, self.kv_dim()) / crate::kv::BLOCK as u64
    }

    /// Positions in the cache of [`Model::forward`]'s sequence.
    pub fn len(&self) -> usize {
        self.solo.as_ref().map_or(0, |(_, seq)| seq.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Feeds `tokens` at positions `pos..` of the model's one unbatched sequence and returns
    /// the logits after the last one. `pos` must be the cache's length (continue) or 0 (a new
    /// sequence; a prompt that starts like an earlier one reuses its cached blocks).
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<&[f32], InferError> {
        if pos != 0 && pos != self.len() {
            return Err(InferError::Input(format!(
                "position {pos} does not continue the cache of {} positions",
                self.len()
            )));
        }
        let context = self.config.context;
        if pos + tokens.len() > context {
            return Err(InferError::Input(format!(
                "{} positions exceed the model's context of {context}",
                pos + tokens.len(),
            )));
        }
        let (mut pool, mut seq) = match self.solo.take() {
            Some((pool, seq)) if pos > 0 => (pool, seq),
            previous => {
                let mut pool = match previous {
                    Some((mut pool, seq)) => {
                        pool.release(seq);
                        pool
                    }
                    None => self.pool(
                        KvPool::blocks_for(context) as u64
                            * KvPool::block_bytes_for(self.config.layers, self.kv_dim()),
                    ),
                };
                // The pool holds one full context and nothing else is in it.
                let seq = pool
                    .admit(tokens, context)
                    .ok_or_else(|| InferError::Input("the model's own cache is full".into()))?;
                (pool, seq)
            }
        };
        let skip = if pos == 0 { seq.len() } else { 0 };
        let result = self
            .forward_batch(
                &mut pool,
                &mut [Feed {
                    seq: &mut seq,
                    tokens: &tokens[skip..],
                }],
            )
            .map(|_| ());
        self.solo = Some((pool, seq));
        result?;
        Ok(&self.scratch.logits[..self.config.vocab])
    }

    /// One step of a batch: every sequence's new tokens go through the layers together, so
    /// each weight is read once for all of them; each sequence attends only to its own
    /// cache. Returns the logits after each feed's last token, `[feed][vocab]`.
    ///
    /// A row's numbers do not depend on the batch it is in: the products give each row what
    /// the one-row product gives it (the four-row kernels take the single kernel's steps), and
    /// attention runs per sequence in the one-sequence order. So greedy decoding answers the
    /// same alone and in company.
    pub fn forward_batch(
        &mut self,
        pool: &mut KvPool,
        feeds: &mut [Feed<'_>],
    ) -> Result<&[f32], InferError> {
        let c = &self.config;
        if feeds.is_empty() {
            return Err(InferError::Input("no sequences to feed".into()));
        }
        for f in feeds.iter() {
            if f.tokens.is_empty() {
                return Err(InferError::Input("no tokens to feed".into()));
            }
            if f.seq.len() + f.tokens.len() > c.context {
                return Err(InferError::Input(format!(
                    "{} positions exceed the model's context of {}",
                    f.seq.len() + f.tokens.len(),
                    c.context
                )));
            }
            if let Some(t) = f
                .tokens
                .iter()
                .find(|t| **t as usize >= self.embeddings.rows)
            {
                return Err(InferError::Input(format!(
                    "token {t} is outside the vocabulary"
                )));
            }
            if !pool.can_extend(f.seq, f.tokens.len()) {
                return Err(InferError::Input(format!(
                    "the sequence grew past the {} positions it was admitted for",
                    f.seq.len()
                )));
            }
        }
        // Where each feed's rows start, and each row's (feed, position).
        let mut starts = Vec::with_capacity(feeds.len());
        let mut rows = Vec::new();
        for (fi, f) in feeds.iter_mut().enumerate() {
            starts.push(rows.len());
            let pos = pool.extend(f.seq, f.tokens)?;
            rows.extend((0..f.tokens.len()).map(|i| (fi, pos + i)));
        }
        let m = rows.len();
        let k = self.kernels;
        let s = &mut self.scratch;
        let (d, hd) = (c.embd, c.head_dim);
        let (qd, kvd) = (c.heads * hd, c.kv_heads * hd);

        let x = sized(&mut s.x, m * d);
        for (i, t) in feeds.iter().flat_map(|f| f.tokens.iter()).enumerate() {
            self.embeddings.row(*t as usize, &mut x[i * d..(i + 1) * d]);
        }
        let longest = rows.iter().map(|r| r.1 + 1).max().unwrap_or(0);
        rope_tables(c, longest, &mut s.cos, &mut s.sin);
        let seqs: Vec<&Sequence> = feeds.iter().map(|f| &*f.seq).collect();

        for (li, l) in self.layers.iter().enumerate() {
            let x = &mut s.x[..m * d];
            let normed = sized(&mut s.normed, m * d);
            rms_norm(x, &l.attn_norm, c.eps, normed);
            let q = sized(&mut s.q, m * qd);
            let kk = sized(&mut s.k, m * kvd);
            let v = sized(&mut s.v, m * kvd);
            l.wq.matmul(&k, normed, m, q);
            l.wk.matmul(&k, normed, m, kk);
            l.wv.matmul(&k, normed, m, v);
            add_bias(q, l.bq.as_deref());
            add_bias(kk, l.bk.as_deref());
            add_bias(v, l.bv.as_deref());
            for (i, &(_, p)) in rows.iter().enumerate() {
                let (cos, sin) = (
                    &s.cos[p * hd / 2..(p + 1) * hd / 2],
                    &s.sin[p * hd / 2..(p + 1) * hd / 2],
                );
                for h in q[i * qd..(i + 1) * qd].chunks_exact_mut(hd) {
                    rotate(h, cos, sin, c.neox);
                }
                for h in kk[i * kvd..(i + 1) * kvd].chunks_exact_mut(hd) {
                    rotate(h, cos, sin, c.neox);
                }
            }
            for ((f, seq), &start) in feeds.iter().zip(&seqs).zip(&starts) {
                let n = f.tokens.len();
                let pos = rows[start].1;
                pool.write(
                    seq,
                    li,
                    pos,
                    &kk[start * kvd..(start + n) * kvd],
                    &v[start * kvd..(start + n) * kvd],
                );
            }
            let att = sized(&mut s.att, m * qd);
            attention(c, &k, q, pool, &seqs, li, &rows, att);
            let proj = sized(&mut s.proj, m * d);
            l.wo.matmul(&k, att, m, proj);
            for (x, p) in x.iter_mut().zip(proj.iter()) {
                *x += p;
            }
            rms_norm(x, &l.ffn_norm, c.eps, normed);
            let gate = sized(&mut s.gate, m * c.ffn);
            let up = sized(&mut s.up, m * c.ffn);
            l.gate.matmul(&k, normed, m, gate);
            l.up.matmul(&k, normed, m, up);
            for (g, u) in gate.iter_mut().zip(up.iter()) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            l.down.matmul(&k, gate, m, proj);
            for (x, p) in x.iter_mut().zip(proj.iter()) {
                *x += p;
            }
        }
        let n = feeds.len();
        let normed = sized(&mut s.normed, n * d);
        for (fi, f) in feeds.iter().enumerate() {
            let last = starts[fi] + f.tokens.len() - 1;
            rms_norm(
                &s.x[last * d..(last + 1) * d],
                &self.out_norm,
                c.eps,
                &mut normed[fi * d..(fi + 1) * d],
            );
        }
        let logits = sized(&mut s.logits, n * c.vocab);
        self.output.matmul(&k, normed, n, logits);
        Ok(&s.logits[..n * c.vocab])
    }
}

/// `out = x / sqrt(mean(x^2) + eps) * w`, row by row.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        // As candle computes it, division included: the normalised values are quantised
        // next, and a last-bit difference here can round an activation the other way.
        let m = (row.iter().map(|v| v * v).sum::<f32>() / d as f32 + eps).sqrt();
        for ((o, v), w) in o.iter_mut().zip(row).zip(w) {
            *o = v / m * w;
        }
    }
}

fn add_bias(x: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in x.chunks_exact_mut(b.len()) {
            for (x, b) in row.iter_mut().zip(b) {
                *x += b;
            }
        }
    }
}

/// The rotary tables up to `positions`, `[position][head_dim / 2]`, extended as needed (the
/// angles as candle computes them: `position * base^(-2i/d)` in f32).
fn rope_tables(c: &Config, positions: usize, cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
    let half = c.head_dim / 2;
    let have = cos.len() / half;
    for p in have..positions {
        for i in 0..half {
            let theta = 1.0 / c.rope_base.powf((2 * i) as f32 / c.head_dim as f32);
            let angle = p as f32 * theta;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
}

/// Rotates one head's vector: pairs `(2i, 2i+1)` (llama's GGUF layout) or halves `(i, i+d/2)`
/// (qwen2's).
fn rotate(h: &mut [f32], cos: &[f32], sin: &[f32], neox: bool) {
    let half = h.len() / 2;
    for i in 0..half {
        let (a, b) = if neox {
            (i, i + half)
        } else {
            (2 * i, 2 * i + 1)
        };
        let (x0, x1) = (h[a], h[b]);
        h[a] = x0 * cos[i] - x1 * sin[i];
        h[b] = x0 * sin[i] + x1 * cos[i];
    }
}

/// Causal attention of every row of a step over its own sequence's cache (row `i` is
/// `rows[i] = (sequence, position)` and sees positions `..= position`); `out` is
/// `rows x heads x head_dim`. Heads (and rows) spread over the thread pool.
#[allow(clippy::too_many_arguments)]
fn attention(
    c: &Config,
    k: &Kernels,
    q: &[f32],
    pool: &KvPool,
    seqs: &[&Sequence],
    layer: usize,
    rows: &[(usize, usize)],
    out: &mut [f32],
) {
    let hd = c.head_dim;
    let group = c.heads / c.kv_heads;
    let kvd = c.kv_heads * hd;
    // candle divides by sqrt(head_dim) taken in f64.
    let scale = (1.0 / (hd as f64).sqrt()) as f32;
    let work = |slot: usize, o: &mut [f32]| {
        let (i, h) = (slot / c.heads, slot % c.heads);
        let (si, pos) = rows[i];
        let seq = seqs[si];
        let g = h / group;
        let qh = &q[(i * c.heads + h) * hd..][..hd];
        let seen = pos + 1;
        SCORES.with(|cell| {
            let mut scores = cell.borrow_mut();
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for b in 0..seen.div_ceil(BLOCK) {
                let (keys, _) = pool.block(seq, layer, b);
                for key in keys.chunks_exact(kvd).take(seen - b * BLOCK) {
                    let s = (k.f32)(qh, &key[g * hd..][..hd]) * scale;
                    max = max.max(s);
                    scores.push(s);
                }
            }
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            o.fill(0.0);
            for (b, scores) in scores.chunks(BLOCK).enumerate() {
                let (_, values) = pool.block(seq, layer, b);
                for (s, value) in scores.iter().zip(values.chunks_exact(kvd)) {
                    (k.axpy)(s / sum, &value[g * hd..][..hd], o);
                }
            }
        });
    };
    let slots = rows.len() * c.heads;
    let out = &mut out[..slots * hd];
    let work_size: usize = rows.iter().map(|r| r.1 + 1).sum::<usize>() * c.heads * hd;
    if work_size < 1 << 15 {
        for (slot, o) in out.chunks_exact_mut(hd).enumerate() {
            work(slot, o);
        }
    } else {
        let dst = Out(out.as_mut_ptr());
        crate::quant::pool().execute_chunked(slots, |range| {
            for slot in range {
                // SAFETY: each slot owns its own `hd` floats of `out`, and every slot is
                // handed to exactly one worker.
                let o = unsafe { std::slice::from_raw_parts_mut(dst.at(slot * hd), hd) };
                work(slot, o);
            }
        });
    }
}

thread_local! {
    /// One head's attention scores, reused so decoding allocates nothing.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}
