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
use crate::quant::{Kernels, Out, QWeight, Storage, pool};

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
    /// Keys and values of every position so far, `[position][kv head][head_dim]`.
    keys: Vec<f32>,
    values: Vec<f32>,
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
    /// Positions in the KV cache.
    len: usize,
    scratch: Scratch,
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
        let matrix = |name: &str| tensor(name)?.batched();
        let vector = |name: &str| tensor(name).map(|t| t.to_f32());
        let optional = |name: &str| {
            ct.tensor_infos
                .contains_key(name)
                .then(|| vector(name))
                .transpose()
        };

        let embeddings = tensor("token_embd.weight")?;
        let output = if ct.tensor_infos.contains_key("output.weight") {
            tensor("output.weight")?
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
                keys: Vec::new(),
                values: Vec::new(),
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
            len: 0,
            scratch: Scratch::default(),
        })
    }

    /// Positions in the KV cache now.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Feeds `tokens` at positions `pos..` and returns the logits after the last one. `pos`
    /// must be the cache's length (continue) or 0 (a new sequence, which keeps the cache's
    /// memory for reuse).
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<&[f32], InferError> {
        let c = &self.config;
        if tokens.is_empty() {
            return Err(InferError::Input("no tokens to feed".into()));
        }
        if pos != 0 && pos != self.len {
            return Err(InferError::Input(format!(
                "position {pos} does not continue the cache of {} positions",
                self.len
            )));
        }
        if pos + tokens.len() > c.context {
            return Err(InferError::Input(format!(
                "{} positions exceed the model's context of {}",
                pos + tokens.len(),
                c.context
            )));
        }
        if let Some(t) = tokens.iter().find(|t| **t as usize >= self.embeddings.rows) {
            return Err(InferError::Input(format!(
                "token {t} is outside the vocabulary"
            )));
        }
        if pos == 0 {
            for l in &mut self.layers {
                l.keys.clear();
                l.values.clear();
            }
        }
        let m = tokens.len();
        let k = self.kernels;
        let s = &mut self.scratch;
        let (d, hd) = (c.embd, c.head_dim);
        let (qd, kvd) = (c.heads * hd, c.kv_heads * hd);

        let x = sized(&mut s.x, m * d);
        for (i, t) in tokens.iter().enumerate() {
            self.embeddings.row(*t as usize, &mut x[i * d..(i + 1) * d]);
        }
        rope_tables(c, pos + m, &mut s.cos, &mut s.sin);

        for l in &mut self.layers {
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
            for i in 0..m {
                let p = pos + i;
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
            l.keys.extend_from_slice(kk);
            l.values.extend_from_slice(v);
            let att = sized(&mut s.att, m * qd);
            attention(c, &k, q, &l.keys, &l.values, pos, m, att);
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
        self.len = pos + m;
        let last = &s.x[(m - 1) * d..m * d];
        let normed = sized(&mut s.normed, d);
        rms_norm(last, &self.out_norm, c.eps, normed);
        let logits = sized(&mut s.logits, c.vocab);
        self.output.matmul(&k, normed, 1, logits);
        Ok(&s.logits[..c.vocab])
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

/// Causal attention of the `m` new positions (from `pos`) over the cache; `out` is
/// `m x heads x head_dim`. Heads (and positions) spread over the thread pool.
#[allow(clippy::too_many_arguments)]
fn attention(
    c: &Config,
    k: &Kernels,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    pos: usize,
    m: usize,
    out: &mut [f32],
) {
    let hd = c.head_dim;
    let group = c.heads / c.kv_heads;
    let kvd = c.kv_heads * hd;
    // candle divides by sqrt(head_dim) taken in f64.
    let scale = (1.0 / (hd as f64).sqrt()) as f32;
    let work = |slot: usize, o: &mut [f32]| {
        let (i, h) = (slot / c.heads, slot % c.heads);
        let g = h / group;
        let qh = &q[(i * c.heads + h) * hd..][..hd];
        let seen = pos + i + 1;
        SCORES.with(|cell| {
            let mut scores = cell.borrow_mut();
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for j in 0..seen {
                let s = (k.f32)(qh, &keys[j * kvd + g * hd..][..hd]) * scale;
                max = max.max(s);
                scores.push(s);
            }
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            o.fill(0.0);
            for (j, s) in scores.iter().enumerate() {
                (k.axpy)(s / sum, &values[j * kvd + g * hd..][..hd], o);
            }
        });
    };
    let slots = m * c.heads;
    let out = &mut out[..slots * hd];
    if slots * (pos + m) * hd < 1 << 15 {
        for (slot, o) in out.chunks_exact_mut(hd).enumerate() {
            work(slot, o);
        }
    } else {
        let dst = Out(out.as_mut_ptr());
        pool().execute_chunked(slots, |range| {
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
