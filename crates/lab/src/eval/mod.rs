//! Quality evals: how well a (model, device) does each kind of task, measured on real data so
//! the planner's quality floors rest on evidence instead of a ranking by size.
//!
//! Every item is asked the way a workflow step would ask it (a system and a user message,
//! greedy decoding) through the same [`Backend`] a run uses, so a local model and an endpoint
//! are evaluated alike; code answers are run in the tool sandbox. A score is a mean over the
//! items asked, in [0, 1], and becomes a `measured` quality figure that names its eval and
//! sample size.

pub mod humaneval;
pub mod score;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use joule_planner::figure::Source;
use joule_planner::profile::Quality;
use joule_planner::spec::Task;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use joule_call::{Backend, Call, Cancel, LlmCall, OnTokens, Site, ToolCall};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{origin}:{line}: {message}")]
    Data {
        origin: String,
        line: usize,
        message: String,
    },
    #[error("cannot fetch HumanEval: {0}")]
    Fetch(String),
    #[error("{0}")]
    Call(String),
    #[error(
        "there is no eval for task `{0}`; evals exist for classify, extract, summarize, answer and code"
    )]
    NoEval(String),
}

/// One item of an eval set; the fields say what the answer is compared with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Item {
    Classify {
        id: String,
        text: String,
        labels: Vec<String>,
        label: String,
    },
    Extract {
        id: String,
        text: String,
        schema: Value,
        expected: Map<String, Value>,
    },
    Summarize {
        id: String,
        text: String,
        reference: String,
    },
    Answer {
        id: String,
        context: String,
        question: String,
        answers: Vec<String>,
    },
    Code(humaneval::Problem),
}

/// The prompt of one item: what a workflow step would send.
#[derive(Debug, Clone)]
pub struct Ask {
    pub system: String,
    pub prompt: String,
    pub max_tokens: u32,
}

impl Item {
    pub fn id(&self) -> &str {
        match self {
            Item::Classify { id, .. }
            | Item::Extract { id, .. }
            | Item::Summarize { id, .. }
            | Item::Answer { id, .. } => id,
            Item::Code(p) => &p.task_id,
        }
    }

    pub fn task(&self) -> Task {
        match self {
            Item::Classify { .. } => Task::Classify,
            Item::Extract { .. } => Task::Extract,
            Item::Summarize { .. } => Task::Summarize,
            Item::Answer { .. } => Task::Answer,
            Item::Code(_) => Task::Code,
        }
    }

    pub fn ask(&self) -> Ask {
        let (system, prompt, max_tokens) = match self {
            Item::Classify { text, labels, .. } => (
                "You route customer support messages to the right team.",
                format!(
                    "Classify this message into exactly one of these categories: {}.\n\nMessage: {text}\n\nReply with the category name only.",
                    labels.join(", ")
                ),
                8,
            ),
            Item::Extract { text, schema, .. } => (
                "You extract fields from documents. Reply with one JSON object and nothing else.",
                format!(
                    "Extract the fields described by this JSON schema from the document below.\nSchema: {schema}\nDates as YYYY-MM-DD, amounts as plain numbers.\n\nDocument:\n{text}"
                ),
                128,
            ),
            Item::Summarize { text, .. } => (
                "You write short, factual summaries.",
                format!(
                    "Summarize these meeting notes in one sentence: what was decided, who will do what, and by when.\n\n{text}"
                ),
                80,
            ),
            Item::Answer {
                context, question, ..
            } => (
                "You answer questions from the given passage only.",
                format!(
                    "Passage: {context}\n\nQuestion: {question}\nReply with the answer only, in a few words."
                ),
                24,
            ),
            Item::Code(p) => (
                "You are a careful Python programmer. Reply with code only, no prose.",
                format!(
                    "Complete this Python function. Reply with the whole function in one ```python block.\n\n```python\n{}```",
                    p.prompt
                ),
                512,
            ),
        };
        Ask {
            system: system.to_string(),
            prompt,
            max_tokens,
        }
    }
}

/// A named set of items of one task.
#[derive(Debug, Clone)]
pub struct EvalSet {
    /// Written into the profile with the score (`joule-classify-v1`, `humaneval`).
    pub name: String,
    pub task: Task,
    pub items: Vec<Item>,
}

const BUILTIN: [(Task, &str); 4] = [
    (
        Task::Classify,
        include_str!("../../../../profiles/evals/classify.jsonl"),
    ),
    (
        Task::Extract,
        include_str!("../../../../profiles/evals/extract.jsonl"),
    ),
    (
        Task::Summarize,
        include_str!("../../../../profiles/evals/summarize.jsonl"),
    ),
    (
        Task::Answer,
        include_str!("../../../../profiles/evals/answer.jsonl"),
    ),
];

impl EvalSet {
    /// The set joule ships for a task (`profiles/evals/<task>.jsonl`); code uses HumanEval.
    pub fn builtin(task: Task) -> Result<Self, EvalError> {
        let (_, text) = BUILTIN
            .iter()
            .find(|(t, _)| *t == task)
            .ok_or_else(|| EvalError::NoEval(task.as_str().into()))?;
        Self::parse(
            task,
            &format!("joule-{}-v1", task.as_str()),
            text,
            &format!("profiles/evals/{}.jsonl", task.as_str()),
        )
    }

    pub fn humaneval(problems: Vec<humaneval::Problem>) -> Self {
        Self {
            name: "humaneval".into(),
            task: Task::Code,
            items: problems.into_iter().map(Item::Code).collect(),
        }
    }

    /// Reads JSON lines of `task` items; a line of another shape is an error at its line.
    pub fn parse(task: Task, name: &str, text: &str, origin: &str) -> Result<Self, EvalError> {
        let mut items = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |message: String| EvalError::Data {
                origin: origin.to_string(),
                line: i + 1,
                message,
            };
            let item: Item = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
            if item.task() != task {
                return Err(bad(format!(
                    "this is a {} item, not a {} one",
                    item.task().as_str(),
                    task.as_str()
                )));
            }
            items.push(item);
        }
        Ok(Self {
            name: name.to_string(),
            task,
            items,
        })
    }
}

/// How one item went.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub id: String,
    pub score: f64,
    pub output: String,
    /// Why the score is not 1 (a wrong field, the test report), when that is known.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub seconds: f64,
}

/// Scores an answer. Code is run through `backend`'s `python_tests` tool, in the sandbox.
pub async fn score(
    item: &Item,
    answer: &str,
    backend: &dyn Backend,
    cancel: &Cancel,
) -> Result<(f64, String), EvalError> {
    Ok(match item {
        Item::Classify { labels, label, .. } => match score::label(labels, answer) {
            Some(l) if l == *label => (1.0, String::new()),
            Some(l) => (0.0, format!("said {l}, expected {label}")),
            None => (0.0, format!("named no single label; expected {label}")),
        },
        Item::Extract {
            schema, expected, ..
        } => score::fields(schema, expected, answer),
        Item::Summarize { reference, .. } => (score::rouge_l(answer, reference), String::new()),
        Item::Answer { answers, .. } => (score::token_f1(answer, answers), String::new()),
        Item::Code(p) => {
            let code = score::code(answer);
            let call = Call::Tool(ToolCall {
                tool: "python_tests".into(),
                args: BTreeMap::from([
                    ("code".to_string(), p.program(code)),
                    ("tests".to_string(), p.tests()),
                ]),
                timeout_s: Some(15.0),
                network: false,
                sandbox: Vec::new(),
            });
            let site = Site {
                step: format!("eval:{}", p.task_id),
                index: None,
                attempt: 1,
            };
            let quiet: OnTokens = Arc::new(|_| {});
            match backend.call(&site, &call, cancel, &quiet).await {
                Ok(a) if a.text.trim_end().ends_with("passed") => (1.0, String::new()),
                Ok(a) => (0.0, last_lines(&a.text, 6)),
                // A crash, timeout or resource limit is the code's failure, not the eval's.
                Err(e) if !cancel.is_cancelled() => (0.0, e.message),
                Err(e) => return Err(EvalError::Call(e.message)),
            }
        }
    })
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Asks `model` on `device` one item and scores the answer.
pub async fn run_item(
    item: &Item,
    model: &str,
    device: &str,
    backend: &dyn Backend,
    cancel: &Cancel,
) -> Result<Scored, EvalError> {
    let ask = item.ask();
    let call = Call::Llm(LlmCall {
        model: model.to_string(),
        device: device.to_string(),
        system: Some(ask.system),
        prompt: ask.prompt,
        max_tokens: ask.max_tokens,
        temperature: 0.0,
        seed: 0,
        turns: Vec::new(),
        tools: Vec::new(),
        output: None,
    });
    let site = Site {
        step: format!("eval:{}", item.id()),
        index: None,
        attempt: 1,
    };
    let started = Instant::now();
    let quiet: OnTokens = Arc::new(|_| {});
    let answer = backend
        .call(&site, &call, cancel, &quiet)
        .await
        .map_err(|e| {
            EvalError::Call(format!("{model} on {device}, {}: {}", item.id(), e.message))
        })?;
    let seconds = started.elapsed().as_secs_f64();
    let (score, detail) = score(item, &answer.text, backend, cancel).await?;
    Ok(Scored {
        id: item.id().to_string(),
        score,
        output: answer.text,
        detail,
        tokens_in: answer.tokens_in,
        tokens_out: answer.tokens_out,
        seconds,
    })
}

/// The result of one (model, device, eval).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub model: String,
    pub device: String,
    pub task: Task,
    pub eval: String,
    /// Items asked, and how many the set has.
    pub n: usize,
    pub of: usize,
    /// Mean score, and its standard error.
    pub score: f64,
    pub stderr: f64,
    pub seconds: f64,
}

impl Summary {
    pub fn of(model: &str, device: &str, set: &EvalSet, scored: &[Scored]) -> Self {
        let n = scored.len();
        let mean = scored.iter().map(|s| s.score).sum::<f64>() / n.max(1) as f64;
        let var = scored.iter().map(|s| (s.score - mean).powi(2)).sum::<f64>()
            / (n.saturating_sub(1)).max(1) as f64;
        Self {
            model: model.to_string(),
            device: device.to_string(),
            task: set.task,
            eval: set.name.clone(),
            n,
            of: set.items.len(),
            score: mean,
            stderr: (var / n.max(1) as f64).sqrt(),
            seconds: scored.iter().map(|s| s.seconds).sum(),
        }
    }

    /// The profile's quality figure: `measured`, with the eval, sample size and metric.
    pub fn quality(&self) -> Quality {
        let metric = match self.task {
            Task::Classify => "exact match",
            Task::Extract => "JSON-schema validity times fields matched",
            Task::Summarize => "ROUGE-L F1",
            Task::Answer => "token F1",
            Task::Code => "pass@1, greedy, tests run in the sandbox",
            Task::Write => "",
        };
        let subset = if self.n < self.of {
            format!("first {} of {} items", self.n, self.of)
        } else {
            format!("all {} items", self.n)
        };
        Quality {
            model: self.model.clone(),
            task: self.task,
            value: (self.score * 1000.0).round() / 1000.0,
            source: Source::Measured,
            meter: None,
            n: Some(self.n as u32),
            eval: Some(self.eval.clone()),
            note: Some(format!(
                "joule eval on {}: {metric}; {subset}; standard error {:.3}",
                self.device, self.stderr
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_sets_parse_and_have_at_least_fifty_items() {
        for (task, _) in BUILTIN {
            let set = EvalSet::builtin(task).unwrap();
            assert!(set.items.len() >= 50, "{}: {}", set.name, set.items.len());
            let mut ids: Vec<&str> = set.items.iter().map(Item::id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), set.items.len(), "{}: ids are unique", set.name);
        }
        assert!(matches!(
            EvalSet::builtin(Task::Write),
            Err(EvalError::NoEval(_))
        ));
    }

    #[test]
    fn an_item_of_the_wrong_task_is_refused_at_its_line() {
        let line = r#"{"id": "s", "text": "t", "reference": "r"}"#;
        let err = EvalSet::parse(Task::Classify, "x", &format!("\n{line}\n"), "f.jsonl")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f.jsonl:2:") && err.contains("summarize item"),
            "{err}"
        );
    }

    #[test]
    fn the_summary_is_a_mean_with_its_standard_error() {
        let set = EvalSet::builtin(Task::Answer).unwrap();
        let scored: Vec<Scored> = [1.0, 0.0, 1.0, 0.0]
            .iter()
            .map(|&score| Scored {
                id: "x".into(),
                score,
                output: String::new(),
                detail: String::new(),
                tokens_in: 0,
                tokens_out: 0,
                seconds: 1.0,
            })
            .collect();
        let s = Summary::of("m", "cpu", &set, &scored);
        assert_eq!((s.n, s.score), (4, 0.5));
        assert!((s.stderr - (1.0f64 / 3.0 / 4.0).sqrt()).abs() < 1e-9);
        let q = s.quality();
        assert_eq!(
            (q.source, q.n, q.eval.as_deref()),
            (Source::Measured, Some(4), Some("joule-answer-v1"))
        );
        assert!(
            q.note
                .unwrap()
                .contains(&format!("first 4 of {}", set.items.len()))
        );
    }
}
