//! The tokenizer, built from the GGUF file's own metadata so a model is one self-contained file:
//! no `tokenizer.json` to fetch or to fall out of step with the weights.
//!
//! GGUF's `gpt2` tokenizer model is byte-level BPE (vocabulary, merges, token types). What
//! differs between models is the pre-tokenizer, named by `tokenizer.ggml.pre`; the patterns
//! below are the ones llama.cpp and the models' own `tokenizer.json` files use.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::LocalError;

/// GPT-2's split, used by SmolLM2 (after splitting digits) and by `gpt2`-style vocabularies.
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Qwen2's split: case-insensitive contractions, single digits, newlines kept apart.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Tags that GGUF files mark as control tokens but that are part of an answer's text: a tool
/// call is read out of the answer between them, so decoding must keep them, and a grammar must
/// be able to name them as text.
const TEXT_TAGS: [&str; 4] = [
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
];

/// GGUF token types (llama.cpp's `llama_token_type`).
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// Tokens that end an assistant turn in the chat formats joule knows, besides the file's EOS.
const END_OF_TURN: [&str; 5] = [
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end|>",
    "</s>",
];

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Token strings by id, as the GGUF vocabulary spells them (byte-level, `Ġ` for space).
    vocab: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    /// Every id that ends generation.
    pub stop_ids: Vec<u32>,
    /// Tokens added to the byte-level vocabulary (turn markers, tool tags), with whether each
    /// is a control token, which text never spells.
    added: Vec<(u32, bool)>,
}

fn get<'a>(ct: &'a Content, key: &str) -> Option<&'a Value> {
    ct.metadata.get(key)
}

fn strings(ct: &Content, key: &str) -> Result<Vec<String>, LocalError> {
    let array = get(ct, key)
        .ok_or_else(|| LocalError::Format(format!("the GGUF file has no `{key}`")))?
        .to_vec()
        .map_err(|e| LocalError::Format(format!("`{key}`: {e}")))?;
    array
        .iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|e| LocalError::Format(format!("`{key}`: {e}")))
        })
        .collect()
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::U8(v) => Some(i64::from(*v)),
        Value::I8(v) => Some(i64::from(*v)),
        Value::U16(v) => Some(i64::from(*v)),
        Value::I16(v) => Some(i64::from(*v)),
        Value::U32(v) => Some(i64::from(*v)),
        Value::I32(v) => Some(i64::from(*v)),
        Value::U64(v) => i64::try_from(*v).ok(),
        Value::I64(v) => Some(*v),
        _ => None,
    }
}

fn token_id(ct: &Content, key: &str) -> Option<u32> {
    get(ct, key)
        .and_then(int)
        .and_then(|v| u32::try_from(v).ok())
}

impl Tokenizer {
    pub fn from_gguf(ct: &Content) -> Result<Self, LocalError> {
        let model = get(ct, "tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
            .unwrap_or("");
        if model != "gpt2" {
            return Err(LocalError::Format(format!(
                "tokenizer model `{model}` is not supported yet (joule reads byte-level BPE, `gpt2`, as used by SmolLM2, Qwen2 and Llama 3)"
            )));
        }
        let tokens = strings(ct, "tokenizer.ggml.tokens")?;
        let merges = strings(ct, "tokenizer.ggml.merges")?;
        let types: Vec<i64> = match get(ct, "tokenizer.ggml.token_type") {
            Some(Value::Array(values)) => values.iter().map(|v| int(v).unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges: Merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| LocalError::Format(format!("malformed merge `{m}`")))
            })
            .collect::<Result<_, _>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| LocalError::Format(format!("building the BPE model: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);

        let pre = get(ct, "tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
            .unwrap_or("default");
        inner.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        let added: Vec<(u32, bool)> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == TYPE_CONTROL || **t == TYPE_USER_DEFINED)
            .map(|(id, t)| {
                let text_tag = TEXT_TAGS.contains(&tokens[id].as_str());
                (id as u32, *t == TYPE_CONTROL && !text_tag)
            })
            .collect();
        let special: Vec<AddedToken> = added
            .iter()
            .map(|&(id, control)| AddedToken::from(tokens[id as usize].clone(), control))
            .collect();
        inner
            .add_special_tokens(special)
            .map_err(|e| LocalError::Format(format!("adding the special tokens: {e}")))?;

        let bos = token_id(ct, "tokenizer.ggml.bos_token_id");
        let eos = token_id(ct, "tokenizer.ggml.eos_token_id");
        let add_bos = matches!(
            get(ct, "tokenizer.ggml.add_bos_token"),
            Some(Value::Bool(true))
        );
        let mut stop_ids: Vec<u32> = eos.into_iter().collect();
        for name in END_OF_TURN {
            if let Some(id) = tokens.iter().position(|t| t == name)
                && types.get(id) == Some(&TYPE_CONTROL)
                && !stop_ids.contains(&(id as u32))
            {
                stop_ids.push(id as u32);
            }
        }
        Ok(Self {
            inner,
            vocab: tokens,
            bos,
            eos,
            add_bos,
            stop_ids,
            added,
        })
    }

    /// Every token's bytes, as constrained decoding matches them against a grammar (control
    /// tokens marked as such). llguidance reads the byte-level alphabet the way Hugging Face's
    /// `tokenizer.json` spells it, so the vocabulary is handed over in that shape.
    pub fn token_bytes(&self) -> Result<Vec<Vec<u8>>, String> {
        let added: Vec<serde_json::Value> = self
            .added
            .iter()
            .map(|&(id, special)| {
                serde_json::json!({"id": id, "content": self.vocab[id as usize], "special": special})
            })
            .collect();
        let vocab: serde_json::Map<String, serde_json::Value> = self
            .vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), serde_json::Value::from(i)))
            .collect();
        let json = serde_json::json!({
            "decoder": {"type": "ByteLevel"},
            "added_tokens": added,
            "model": {"vocab": vocab},
        });
        let mut words = llguidance::token_bytes_from_tokenizer_json(&json)
            .map_err(|e| format!("reading the vocabulary: {e}"))?;
        // Ids no entry names (duplicates in a vocabulary) keep an empty spelling.
        words.resize(self.vocab.len(), Vec::new());
        Ok(words)
    }

    /// Tokenizes text that may contain the model's special tokens (a rendered chat prompt).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| LocalError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if self.add_bos
            && let Some(bos) = self.bos
        {
            ids.push(bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Turns ids back into text; control tokens (turn markers) are dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, LocalError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| LocalError::Tokenizer(e.to_string()))
    }

    /// One token as text, special tokens included (as `<|im_end|>`), for log-probabilities.
    pub fn spell(&self, id: u32) -> String {
        self.inner.decode(&[id], false).unwrap_or_default()
    }

    /// The vocabulary entry of an id, as spelled in the GGUF file.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.vocab.get(id as usize).map(String::as_str)
    }

    pub fn id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }
}

fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, LocalError> {
    let split = |pattern: &str| {
        Split::new(
            SplitPattern::Regex(pattern.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| LocalError::Format(format!("pre-tokenizer pattern: {e}")))
    };
    let byte_level = ByteLevel::new(false, true, false);
    Ok(match pre {
        "qwen2" | "deepseek-llm" => {
            Sequence::new(vec![split(QWEN2_PATTERN)?.into(), byte_level.into()]).into()
        }
        "smollm" | "starcoder" | "refact" | "codeshell" => Sequence::new(vec![
            Digits::new(true).into(),
            split(GPT2_PATTERN)?.into(),
            byte_level.into(),
        ])
        .into(),
        _ => Sequence::new(vec![split(GPT2_PATTERN)?.into(), byte_level.into()]).into(),
    })
}

/// Turns a growing list of ids into text pieces as soon as they are whole UTF-8: a byte-level
/// token can end in the middle of a character, so the tail is held back until it completes.
pub struct TextStream {
    ids: Vec<u32>,
    /// How much of `decode(ids)` has been handed out.
    emitted: usize,
    /// Ids before `window` are settled; decoding restarts there to keep each step cheap.
    window: usize,
    settled_text: usize,
}

impl TextStream {
    pub fn new() -> Self {
        Self {
            ids: Vec::new(),
            emitted: 0,
            window: 0,
            settled_text: 0,
        }
    }

    /// Adds an id; returns the new complete text, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, LocalError> {
        self.ids.push(id);
        let tail = tokenizer.decode(&self.ids[self.window..])?;
        if tail.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let total = self.settled_text + tail.len();
        let start = self.emitted - self.settled_text;
        let piece = tail.get(start..).unwrap_or_default().to_string();
        self.emitted = total;
        // Once a few whole tokens are out, start the next window after them.
        if self.ids.len() - self.window > 8 {
            self.window = self.ids.len();
            self.settled_text = total;
        }
        Ok(piece)
    }
}

impl Default for TextStream {
    fn default() -> Self {
        Self::new()
    }
}
