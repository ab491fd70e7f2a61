//! Constrained decoding: an answer that must parse (a JSON schema, one label of a list, a tool
//! call) is generated so that it cannot fail to, by masking every token the grammar does not
//! allow before sampling. Asking nicely in the prompt and checking afterwards loses a retry to
//! every small model's stray sentence; a mask costs a fraction of a decode step.
//!
//! The grammar engine is llguidance (the library llama.cpp and vLLM use), not a home-made one:
//! it compiles JSON Schema and Lark grammars against the tokenizer's byte trie once per model
//! ([`Constrainer`]) and steps one parser per sequence ([`Guide`]), so it works inside a batch:
//! each sequence's mask is its own.

use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};

use super::LocalError;
use super::logprobs::{Ranked, TokenLogprob};
use super::tokenizer::Tokenizer;

/// What an answer must match, in llguidance's Lark dialect (which embeds JSON Schema as
/// `%json { ... }`): one textual form for every kind of constraint, so a request carrying one
/// stays plain, serialisable data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grammar {
    pub lark: String,
}

/// How JSON is spaced inside a constrained answer: the separators of Python's `json.dumps`,
/// which models have read most, and no free whitespace (a small greedy model offered a newline
/// between keys can take it forever).
const JSON_LAYOUT: &str =
    r#"{"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}"#;

impl Grammar {
    /// An answer that is one JSON document valid against `schema`.
    pub fn json_schema(schema: &serde_json::Value) -> Self {
        Self {
            lark: format!("start: {}", json_rule(schema)),
        }
    }

    /// An answer that is one JSON object, of any shape (`response_format: json_object`).
    pub fn json_object() -> Self {
        Self::json_schema(&serde_json::json!({"type": "object"}))
    }

    /// An answer that is exactly one of `choices` (a step's `output: [a, b, c]`).
    pub fn one_of(choices: &[String]) -> Self {
        let alternatives: Vec<String> = choices.iter().map(|c| literal(c)).collect();
        Self {
            lark: format!("start: {}", alternatives.join(" | ")),
        }
    }
}

impl Grammar {
    /// The grammar as rules of another one, its start rule named `reply`. The answer grammars
    /// ([`Grammar::json_schema`], [`Grammar::one_of`]) have that one rule, so nothing else
    /// can clash with the caller's rule names.
    pub fn renamed_start(&self) -> String {
        self.lark
            .lines()
            .map(|line| match line.strip_prefix("start:") {
                Some(body) => format!("reply:{body}"),
                None => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `%json { schema }` with joule's layout unless the schema sets its own.
pub fn json_rule(schema: &serde_json::Value) -> String {
    let mut schema = schema.clone();
    if let Some(object) = schema.as_object_mut() {
        object
            .entry("x-guidance")
            .or_insert_with(|| serde_json::from_str(JSON_LAYOUT).expect("a constant"));
    }
    format!("%json {schema}")
}

/// A Lark string literal for `text` (the dialect reads literals as JSON strings).
pub fn literal(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

/// A model's grammar compiler: its vocabulary as a byte trie, built on the first constrained
/// request (a second or so for a 150k vocabulary) and kept while the model is resident.
pub struct Constrainer {
    factory: OnceLock<Result<Arc<ParserFactory>, String>>,
}

impl Constrainer {
    pub fn new() -> Self {
        Self {
            factory: OnceLock::new(),
        }
    }

    fn factory(&self, tokenizer: &Tokenizer) -> Result<Arc<ParserFactory>, LocalError> {
        self.factory
            .get_or_init(|| build_factory(tokenizer).map(Arc::new))
            .clone()
            .map_err(|e| LocalError::Request(format!("constrained decoding: {e}")))
    }

    /// Compiles `grammar` for one request: a grammar that does not compile (a bad schema, an
    /// unsatisfiable one) is the request's error, found before it waits for the model.
    pub fn guide(&self, tokenizer: &Tokenizer, grammar: &Grammar) -> Result<Guide, LocalError> {
        let factory = self.factory(tokenizer)?;
        let parser = factory
            .create_parser(TopLevelGrammar::from_lark(grammar.lark.clone()))
            .map_err(|e| LocalError::Request(format!("the output constraint: {e}")))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(LocalError::Request(format!("the output constraint: {e}")));
        }
        Ok(Guide { matcher })
    }
}

impl Default for Constrainer {
    fn default() -> Self {
        Self::new()
    }
}

fn build_factory(tokenizer: &Tokenizer) -> Result<ParserFactory, String> {
    let words = tokenizer.token_bytes()?;
    let stop_ids = &tokenizer.stop_ids;
    let eos = stop_ids
        .first()
        .copied()
        .ok_or("the model names no end-of-sequence token")?;
    let info = TokRxInfo::new(words.len() as u32, eos);
    let trie = TokTrie::from(&info, &words).with_eos_tokens(stop_ids);
    let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
    let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
    factory.quiet();
    Ok(factory)
}

/// One sequence's constraint: which tokens may come next, advanced by every token sampled.
#[derive(Clone)]
pub struct Guide {
    matcher: Matcher,
}

impl Guide {
    /// Masks (sets to minus infinity) the logits of every token the grammar forbids next. The
    /// row may be longer than the vocabulary (padded embeddings): those ids are never allowed.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), LocalError> {
        let allowed = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| LocalError::Request(format!("constrained decoding: {e}")))?;
        if allowed.is_zero() {
            return Err(LocalError::Request(
                "constrained decoding: the grammar allows no next token".into(),
            ));
        }
        let vocab = allowed.len().min(logits.len());
        allowed.iter_unset_entries(|i| {
            if i < vocab {
                logits[i] = f32::NEG_INFINITY;
            }
        });
        for l in logits.iter_mut().skip(vocab) {
            *l = f32::NEG_INFINITY;
        }
        Ok(())
    }

    /// Advances past a sampled token.
    pub fn commit(&mut self, token: u32) -> Result<(), LocalError> {
        if self.matcher.is_stopped() {
            // An end token after the grammar is complete.
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| LocalError::Request(format!("constrained decoding: {e}")))
    }
}

/// Both engines' sampling step under an optional guide: the row masked, one token sampled,
/// the guide advanced; with `logprobs: Some(n)`, the token's log-probability and the `n`
/// likeliest tokens, read from the row before the mask.
pub(crate) fn sample(
    guide: Option<&mut Guide>,
    row: &mut [f32],
    sampler: &mut candle_transformers::generation::LogitsProcessor,
    logprobs: Option<usize>,
) -> Result<(u32, Option<TokenLogprob>), LocalError> {
    let ranked = logprobs.map(|n| Ranked::of(row, n));
    let token = match guide {
        None => sample_row(row, sampler)?,
        Some(guide) => {
            guide.mask(row)?;
            let token = sample_row(row, sampler)?;
            guide.commit(token)?;
            token
        }
    };
    // The mask never touches the token it allows, so its logit is still the raw one.
    let logit = row
        .get(token as usize)
        .copied()
        .unwrap_or(f32::NEG_INFINITY);
    Ok((token, ranked.map(|r| r.pick(token, logit))))
}

fn sample_row(
    row: &[f32],
    sampler: &mut candle_transformers::generation::LogitsProcessor,
) -> Result<u32, LocalError> {
    let tensor = candle_core::Tensor::from_slice(row, row.len(), &candle_core::Device::Cpu)?;
    Ok(sampler.sample(&tensor)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Whether `grammar` accepts `text` whole, over a vocabulary of single bytes, so that the
    /// grammar decides and no tokenizer's word boundaries do.
    pub(crate) fn accepts(grammar: &Grammar, text: &str) -> bool {
        let mut words: Vec<Vec<u8>> = (0u8..=254).map(|b| vec![b]).collect();
        words.push(b"\xffeos".to_vec());
        let info = TokRxInfo::new(words.len() as u32, 255);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, &words)));
        let mut factory = ParserFactory::new_simple(&env).expect("a byte vocabulary");
        factory.quiet();
        let parser = factory
            .create_parser(TopLevelGrammar::from_lark(grammar.lark.clone()))
            .unwrap_or_else(|e| panic!("{e}: {}", grammar.lark));
        let mut matcher = Matcher::new(Ok(parser));
        let tokens: Vec<u32> = text.bytes().map(u32::from).collect();
        matcher.validate_tokens(&tokens).unwrap_or(0) == tokens.len()
            && matcher.consume_tokens(&tokens).is_ok()
            && matcher.is_accepting().unwrap_or(false)
    }

    #[test]
    fn the_grammars_accept_what_they_say_and_nothing_else() {
        let one = Grammar::one_of(&["bug".into(), "billing".into()]);
        assert!(accepts(&one, "bug") && accepts(&one, "billing"));
        assert!(!accepts(&one, "bugs") && !accepts(&one, "other"));
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["n"],
        });
        let g = Grammar::json_schema(&schema);
        assert!(accepts(&g, r#"{"n": 7}"#));
        assert!(!accepts(&g, r#"{"n": 12}"#) && !accepts(&g, r#"{"m": 1}"#));
    }
}
