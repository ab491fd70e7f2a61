//! Scoring one answer against one reference. Pure functions, so each metric is tested on
//! known answers without a model.
//!
//! The metrics follow common practice: exact match after the runtime's own `one_of`
//! normalisation (an eval should accept exactly what a workflow step would), JSON-schema
//! validity times the fraction of fields that match, ROUGE-L F1 over lowercased words for
//! summaries, and SQuAD-style token F1 for short answers.

use serde_json::{Map, Value};

use joule_executor::runtime::check;
use joule_planner::spec::OutputSpec;

/// The label, if the answer names exactly one (as the runtime's `one_of` check reads it).
pub fn label(labels: &[String], answer: &str) -> Option<String> {
    check::check(&OutputSpec::OneOf(labels.to_vec()), answer)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
}

/// 0 when the answer is not JSON valid against `schema` (as the runtime checks it);
/// otherwise the fraction of `expected` fields whose values match. Strings match ignoring
/// case and surrounding space; numbers within half a cent.
pub fn fields(schema: &Value, expected: &Map<String, Value>, answer: &str) -> (f64, String) {
    let v = match check::check(&OutputSpec::JsonSchema(schema.clone()), answer) {
        Ok(v) => v,
        Err(e) => return (0.0, e),
    };
    if expected.is_empty() {
        return (1.0, String::new());
    }
    let mut wrong = Vec::new();
    for (k, want) in expected {
        if !same(want, v.get(k).unwrap_or(&Value::Null)) {
            wrong.push(k.as_str());
        }
    }
    let score = 1.0 - wrong.len() as f64 / expected.len() as f64;
    let detail = if wrong.is_empty() {
        String::new()
    } else {
        format!("wrong: {}", wrong.join(", "))
    };
    (score, detail)
}

fn same(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => (a - b).abs() < 0.005,
            _ => false,
        },
        (Value::String(a), Value::String(b)) => a.trim().to_lowercase() == b.trim().to_lowercase(),
        _ => want == got,
    }
}

/// Lowercased words (letters and digits), the unit both overlap metrics count.
fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn f1(overlap: usize, candidate: usize, reference: usize) -> f64 {
    if overlap == 0 || candidate == 0 || reference == 0 {
        return 0.0;
    }
    let p = overlap as f64 / candidate as f64;
    let r = overlap as f64 / reference as f64;
    2.0 * p * r / (p + r)
}

/// ROUGE-L F1: the longest common subsequence of words, as precision and recall.
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let (c, r) = (words(candidate), words(reference));
    // One row of the LCS table at a time: O(|c|·|r|) time, O(|r|) memory.
    let mut prev = vec![0usize; r.len() + 1];
    let mut row = vec![0usize; r.len() + 1];
    for cw in &c {
        for (j, rw) in r.iter().enumerate() {
            row[j + 1] = if cw == rw {
                prev[j] + 1
            } else {
                row[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut row);
    }
    f1(prev[r.len()], c.len(), r.len())
}

/// SQuAD's answer normalisation: lowercase, no punctuation, no articles.
fn answer_words(s: &str) -> Vec<String> {
    words(s)
        .into_iter()
        .filter(|w| !matches!(w.as_str(), "a" | "an" | "the"))
        .collect()
}

/// The best token F1 of the answer against any of the accepted answers.
pub fn token_f1(answer: &str, accepted: &[String]) -> f64 {
    let got = answer_words(answer);
    accepted
        .iter()
        .map(|a| {
            let want = answer_words(a);
            let mut pool = want.clone();
            let overlap = got
                .iter()
                .filter(|w| {
                    pool.iter()
                        .position(|p| p == *w)
                        .map(|i| pool.swap_remove(i))
                        .is_some()
                })
                .count();
            f1(overlap, got.len(), want.len())
        })
        .fold(0.0, f64::max)
}

/// The code of an answer: the first fenced block when there is one (a model often adds
/// prose around it), otherwise the whole answer.
pub fn code(answer: &str) -> &str {
    let Some(start) = answer.find("```") else {
        return answer;
    };
    let rest = &answer[start + 3..];
    let body = rest.split_once('\n').map_or("", |(_, b)| b);
    body.find("```").map_or(body, |end| &body[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_are_read_as_the_runtime_reads_them() {
        let labels: Vec<String> = ["billing", "technical"].map(String::from).to_vec();
        assert_eq!(label(&labels, " Billing.").as_deref(), Some("billing"));
        assert_eq!(
            label(&labels, "The category is technical").as_deref(),
            Some("technical")
        );
        assert_eq!(label(&labels, "billing or technical"), None);
        assert_eq!(label(&labels, "shipping"), None);
    }

    #[test]
    fn fields_need_valid_json_and_count_matching_fields() {
        let schema = json!({"type": "object", "required": ["a", "n"],
            "properties": {"a": {"type": "string"}, "n": {"type": "number"}}});
        let expected = json!({"a": "Acme Ltd", "n": 12.5});
        let expected = expected.as_object().unwrap();
        assert_eq!(
            fields(&schema, expected, r#"{"a": "acme ltd ", "n": 12.5}"#).0,
            1.0
        );
        assert_eq!(
            fields(
                &schema,
                expected,
                "```json\n{\"a\": \"Acme Ltd\", \"n\": 12}\n```"
            )
            .0,
            0.5
        );
        assert_eq!(fields(&schema, expected, r#"{"a": "Acme Ltd"}"#).0, 0.0);
        assert_eq!(fields(&schema, expected, "Acme Ltd, 12.5").0, 0.0);
    }

    #[test]
    fn rouge_l_counts_the_longest_common_subsequence() {
        assert_eq!(rouge_l("the cat sat", "the cat sat"), 1.0);
        assert_eq!(rouge_l("dogs bark", "the cat sat"), 0.0);
        // LCS "the sat" = 2; precision 2/3, recall 2/3.
        let r = rouge_l("the dog sat", "the cat sat");
        assert!((r - 2.0 / 3.0).abs() < 1e-9, "{r}");
        // Order matters: a reversed sentence shares one word in order.
        assert!(rouge_l("sat cat the", "the cat sat") < 0.34);
    }

    #[test]
    fn token_f1_takes_the_best_accepted_answer() {
        let accepted = vec!["61 metres".to_string(), "61".to_string()];
        assert_eq!(token_f1("61", &accepted), 1.0);
        // 2 of 4 words are the answer's 2: precision 1/2, recall 1.
        assert!((token_f1("It is 61 metres.", &accepted) - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(token_f1("The Ana Vargas", &["Ana Vargas".into()]), 1.0);
        assert_eq!(token_f1("nobody", &accepted), 0.0);
    }

    #[test]
    fn code_comes_out_of_its_fence() {
        assert_eq!(
            code("Here:\n```python\ndef f():\n    return 1\n```\nDone."),
            "def f():\n    return 1\n"
        );
        assert_eq!(code("def f(): pass"), "def f(): pass");
        assert_eq!(code("```\nx = 1\n"), "x = 1\n");
    }
}
