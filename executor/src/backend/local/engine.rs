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
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
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

    pub fn load<R: std::io::Read + std::io::Seek>(
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
        let input = Tensor::new(tokens, device)?.unsqueeze(0)?;
        let logits = match self {
            Self::Llama(m) => m.forward(&input, pos)?,
            Self::Qwen2(m) => m.forward(&input, pos)?,
        };
        Ok(logits.squeeze(0)?.to_dtype(candle_core::DType::F32)?)
    }
}
