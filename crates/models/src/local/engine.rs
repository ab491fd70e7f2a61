//! The one place where a model's forward pass runs. Everything about speed (batching, kernels,
//! KV-cache layout) changes here and nowhere else; generation only asks for the logits of the
//! last position after feeding some tokens.

use candle_core::quantized::gguf_file::Content;

use candle_core::{Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2};

use super::LocalError;

/// How many positions candle's quantized llama precomputes its rotary tables for.
const LLAMA_MAX_POSITIONS: usize = quantized_llama::MAX_SEQ_LEN;

pub enum Engine {
    /// joule's own forward pass (`joule-infer`): SIMD kernels, the weights memory-mapped.
    Fast(Box<joule_infer::Model>),
    /// candle-transformers' models: the reference the fast path is checked against, and the
    /// path on GPUs.
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
}

/// Which forward pass runs a model on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// joule's own (`joule-infer`), where it supports the file.
    #[default]
    Fast,
    /// candle-transformers' models, for comparison (the GPU always uses them).
    Reference,
}

/// How local models are loaded: chosen once by the application's settings
/// (`JOULE_ENGINE`, `JOULE_WEIGHTS`) and handed down, never read here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    pub engine: EngineKind,
    /// Read the fast path's weights into huge pages (else map the file).
    pub huge_pages: bool,
    /// Requests the fast path steps together at most (its batch capacity).
    pub batch: usize,
    /// The resident-memory budget: a model's KV pool gets what its weights leave of it.
    pub memory_bytes: u64,
}

/// Sequences per batched step unless the settings say otherwise: on two to sixteen cores a
/// decode step of eight costs well under twice a step of one.
pub const DEFAULT_BATCH: usize = 8;

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            engine: EngineKind::Fast,
            huge_pages: true,
            batch: DEFAULT_BATCH,
            memory_bytes: u64::MAX,
        }
    }
}

impl Engine {
    pub fn arch(ct: &Content) -> Result<String, LocalError> {
        ct.metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| {
                LocalError::Format("the GGUF file names no `general.architecture`".into())
            })
    }

    /// Longest sequence (prompt and answer) the engine can hold.
    pub fn context(ct: &Content) -> Result<usize, LocalError> {
        let arch = Self::arch(ct)?;
        let declared = ct
            .metadata
            .get(&format!("{arch}.context_length"))
            .and_then(|v| v.to_u32().ok())
            .map(|v| v as usize)
            .unwrap_or(2048);
        Ok(match arch.as_str() {
            "llama" => declared.min(LLAMA_MAX_POSITIONS),
            _ => declared,
        })
    }

    /// Loads the weights: on the CPU through the fast path (loading `path`) unless the
    /// reference is requested or the file uses something the fast path lacks; otherwise
    /// through candle, reading the tensors from `reader`.
    pub fn load<R: std::io::Read + std::io::Seek>(
        ct: Content,
        reader: &mut R,
        path: &std::path::Path,
        device: &Device,
        options: LoadOptions,
    ) -> Result<Self, LocalError> {
        if device.is_cpu() && options.engine == EngineKind::Fast {
            match Self::load_fast(&ct, path, options.huge_pages) {
                Ok(model) => return Ok(Self::Fast(Box::new(model))),
                Err(joule_infer::InferError::Unsupported(what)) => {
                    tracing::info!(path = %path.display(), what, "the fast path cannot run this model; using candle's");
                }
                Err(e @ joule_infer::InferError::Format(_)) => {
                    return Err(LocalError::Format(e.to_string()));
                }
                // A file that cannot be read, or a bad setting: the message says which.
                Err(e) => return Err(LocalError::Request(e.to_string())),
            }
        }
        Self::load_reference(ct, reader, device)
    }

    fn load_fast(
        ct: &Content,
        path: &std::path::Path,
        huge_pages: bool,
    ) -> Result<joule_infer::Model, joule_infer::InferError> {
        let weights = joule_infer::quant::load(path, huge_pages)?;
        let kernels = joule_infer::Kernels::detect();
        tracing::debug!(path = %path.display(), weights = %weights.residence(), kernels = kernels.name, "fast path");
        joule_infer::Model::from_content(ct, weights, kernels)
    }

    /// candle's model, whatever the device.
    pub fn load_reference<R: std::io::Read + std::io::Seek>(
        ct: Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self, LocalError> {
        let arch = Self::arch(&ct)?;
        match arch.as_str() {
            "llama" => Ok(Self::Llama(quantized_llama::ModelWeights::from_gguf(
                ct, reader, device,
            )?)),
            "qwen2" => Ok(Self::Qwen2(quantized_qwen2::ModelWeights::from_gguf(
                ct, reader, device,
            )?)),
            other => Err(LocalError::Format(format!(
                "architecture `{other}` is not supported yet (joule runs `llama` and `qwen2` GGUF files)"
            ))),
        }
    }

    /// Feeds `tokens` at positions `pos..` and returns the f32 logits after the last one.
    /// `pos == 0` starts a new sequence (the KV cache is replaced, not appended to).
    pub fn forward(
        &mut self,
        tokens: &[u32],
        pos: usize,
        device: &Device,
    ) -> Result<Tensor, LocalError> {
        if let Self::Fast(m) = self {
            let logits = m
                .forward(tokens, pos)
                .map_err(|e| LocalError::Format(e.to_string()))?;
            return Ok(Tensor::from_slice(logits, logits.len(), device)?);
        }
        let input = Tensor::new(tokens, device)?.unsqueeze(0)?;
        let logits = match self {
            Self::Fast(_) => unreachable!("answered above"),
            Self::Llama(m) => m.forward(&input, pos)?,
            Self::Qwen2(m) => m.forward(&input, pos)?,
        };
        Ok(logits.squeeze(0)?.to_dtype(candle_core::DType::F32)?)
    }
}
