//! Log-probabilities of the tokens an answer is made of, and of the likeliest alternatives at
//! each step: what OpenAI's `logprobs` gives clients (confidence scores, classifiers that read
//! the probability of each label). They come from the model's own distribution, the raw row of
//! logits before temperature and before any grammar's mask, so a constrained answer reports how
//! likely the model found each token, not how likely it was once the grammar had spoken.

use serde::{Deserialize, Serialize};

use super::tokenizer::Tokenizer;

/// One answer token's log-probability and its step's likeliest tokens, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub id: u32,
    /// The token as text (a token that ends inside a UTF-8 character shows U+FFFD).
    pub text: String,
    pub logprob: f32,
    pub top: Vec<Alternative>,
}

/// A token the model could have chosen at that step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alternative {
    pub id: u32,
    pub text: String,
    pub logprob: f32,
}

impl TokenLogprob {
    /// Fills in the tokens' text, which only the engine's caller (who has the tokenizer and
    /// is off the engine's thread) spells out.
    pub(crate) fn spelled(mut self, tokenizer: &Tokenizer) -> Self {
        self.text = tokenizer.spell(self.id);
        for a in &mut self.top {
            a.text = tokenizer.spell(a.id);
        }
        self
    }
}

/// A step's distribution, read before the row is masked or sampled from.
pub(crate) struct Ranked {
    log_sum_exp: f32,
    top: Vec<(u32, f32)>,
}

impl Ranked {
    /// The normaliser of `row` and its `n` highest entries (one pass, `n` is at most 20).
    pub(crate) fn of(row: &[f32], n: usize) -> Self {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = row.iter().map(|&l| (l - max).exp()).sum();
        let log_sum_exp = max + sum.ln();
        let mut top: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
        if n > 0 {
            for (i, &l) in row.iter().enumerate() {
                if top.len() == n && l <= top[n - 1].1 {
                    continue;
                }
                let at = top.partition_point(|&(_, t)| t >= l);
                top.insert(at, (i as u32, l));
                top.truncate(n);
            }
        }
        for t in &mut top {
            t.1 -= log_sum_exp;
        }
        Self { log_sum_exp, top }
    }

    /// The entry of the token sampled; `logit` is its raw logit. Texts are left empty.
    pub(crate) fn pick(self, token: u32, logit: f32) -> TokenLogprob {
        TokenLogprob {
            id: token,
            text: String::new(),
            logprob: logit - self.log_sum_exp,
            top: self
                .top
                .into_iter()
                .map(|(id, logprob)| Alternative {
                    id,
                    text: String::new(),
                    logprob,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_probabilities_normalise_and_the_top_is_ranked() {
        let row = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let r = Ranked::of(&row, 3);
        let ids: Vec<u32> = r.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 2], "ties keep the first, then by value");
        let t = r.pick(2, row[2]);
        let total: f32 = row.iter().map(|&l| (l - row[2] + t.logprob).exp()).sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        assert!(t.top[0].logprob > t.logprob && t.logprob < 0.0);
        assert_eq!(
            t.top[2].logprob, t.logprob,
            "the token itself is among the top"
        );
        assert!(Ranked::of(&row, 0).top.is_empty());
    }
}
