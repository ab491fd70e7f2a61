//! The workflow's own idea of quality: how much of it the plan may give up (`quality:` at
//! workflow level) and the examples it is measured on (`examples:`). Kept apart from the
//! step grammar because both are about the whole workflow's answers, not one call.

use serde::Serialize;

use super::raw::{At, RawExamples};
use super::{Checker, Name, Template};
use crate::diag::{ErrorCode, Pos};

/// How the planner treats steps whose quality it has not measured, and how much loss
/// against the reference it accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "rule", content = "within")]
pub enum QualityRule {
    /// The default: a step runs on its reference model (the best-quality one the planner
    /// may use) unless a measured figure says another model loses nothing against it, even
    /// at the upper end of its 95% interval.
    #[default]
    Reference,
    /// Any model may run a step, measured or not (the cheapest wins).
    Any,
    /// As [`QualityRule::Reference`], and the plan's predicted loss of output quality
    /// against the reference (its upper confidence bound, summed over steps) stays within
    /// this much.
    Within(f64),
}

impl QualityRule {
    /// The loss tolerance, when there is one.
    pub fn within(self) -> Option<f64> {
        match self {
            QualityRule::Within(x) => Some(x),
            _ => None,
        }
    }

    /// Whether a step with no quality figure may leave its reference model.
    pub fn allows_unmeasured(self) -> bool {
        self == QualityRule::Any
    }
}

/// How one output's answer is scored against its expected value, 0..1.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "metric")]
pub enum Metric {
    /// The answer, trimmed, equals the expected text (1 or 0).
    Exact,
    /// The answer names the expected label, ignoring case (1 or 0).
    Label,
    /// SQuAD-style token F1, best over the accepted answers (a string or a list of them).
    TokenF1,
    /// ROUGE-L F1 over lowercased words.
    RougeL,
    /// 0 unless the answer is a JSON object (valid against `schema`, when given), else the
    /// fraction of expected fields that match.
    JsonFields { schema: Option<serde_json::Value> },
    /// The expected value is a HumanEval-style problem; 1 when the answer's code passes its
    /// tests in the tool sandbox.
    Tests,
    /// An llm call of `model` rates the answer from 0 to 10, read as a score of 0..1.
    Judge { model: Name, prompt: Template },
}

impl Metric {
    pub const NAMES: [&str; 7] = [
        "exact",
        "label",
        "token_f1",
        "rouge_l",
        "json_fields",
        "tests",
        "judge",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Metric::Exact => "exact",
            Metric::Label => "label",
            Metric::TokenF1 => "token_f1",
            Metric::RougeL => "rouge_l",
            Metric::JsonFields { .. } => "json_fields",
            Metric::Tests => "tests",
            Metric::Judge { .. } => "judge",
        }
    }
}

/// One scored output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputScore {
    pub output: String,
    pub metric: Metric,
    #[serde(skip)]
    pub pos: Pos,
}

/// The workflow's examples file and how its outputs are scored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Examples {
    /// As written: relative to the workflow file.
    pub file: String,
    pub scores: Vec<OutputScore>,
    #[serde(skip)]
    pub pos: Pos,
}

impl Checker<'_> {
    pub(super) fn quality_rule(&mut self, at: &At<serde_json::Value>) -> QualityRule {
        use serde_json::Value as V;
        let help = "write `quality: { within: 0.02 }` (the most quality the plan may lose against the reference) or `quality: any`";
        match &at.value {
            V::String(s) if s == "any" => QualityRule::Any,
            V::Object(o) if o.len() == 1 && o.contains_key("within") => {
                match o["within"].as_f64() {
                    Some(x) if (0.0..=1.0).contains(&x) => QualityRule::Within(x),
                    _ => {
                        self.error(
                            at,
                            1,
                            ErrorCode::InvalidValue,
                            format!("`quality.within` is {}, not a number in 0..1", o["within"]),
                            "a tolerance is a loss of score between 0 (none) and 1",
                        );
                        QualityRule::Reference
                    }
                }
            }
            V::Number(_) => {
                self.error(
                    at,
                    1,
                    ErrorCode::InvalidValue,
                    "a workflow's `quality` is a tolerance, not a floor".into(),
                    format!("{help}; a floor belongs on a step"),
                );
                QualityRule::Reference
            }
            other => {
                self.error(
                    at,
                    1,
                    ErrorCode::InvalidValue,
                    format!("`quality: {other}` is not understood"),
                    help,
                );
                QualityRule::Reference
            }
        }
    }

    pub(super) fn examples(&mut self, raw: RawExamples) -> Examples {
        if raw.file.value.trim().is_empty() {
            self.error(
                &raw.file,
                1,
                ErrorCode::InvalidValue,
                "`examples.file` is empty".into(),
                "name a JSONL file, relative to the workflow file",
            );
        }
        if raw.score.0.is_empty() {
            self.error(
                &raw.file,
                raw.file.value.len().max(1),
                ErrorCode::InvalidValue,
                "`examples.score` scores no output".into(),
                format!(
                    "map an output to a metric, e.g. `score: {{ answer: token_f1 }}` ({})",
                    Metric::NAMES.join(", ")
                ),
            );
        }
        let scores = raw
            .score
            .0
            .into_iter()
            .filter_map(|(key, value)| {
                let metric = self.metric(&value)?;
                Some(OutputScore {
                    pos: self.pos(&key),
                    output: key.value,
                    metric,
                })
            })
            .collect();
        Examples {
            pos: self.pos(&raw.file),
            file: raw.file.value,
            scores,
        }
    }

    fn metric(&mut self, at: &At<serde_json::Value>) -> Option<Metric> {
        use serde_json::Value as V;
        let unknown = |name: &str| {
            let help = match crate::diag::did_you_mean(name, Metric::NAMES) {
                Some(c) => format!("did you mean `{c}`?"),
                None => format!("metrics: {}", Metric::NAMES.join(", ")),
            };
            (format!("`{name}` is not a metric"), help)
        };
        let (name, args) = match &at.value {
            V::String(s) => (s.as_str(), None),
            V::Object(o) if o.len() == 1 => {
                let (k, v) = o.iter().next().expect("one entry");
                (k.as_str(), Some(v))
            }
            _ => {
                self.error(
                    at,
                    1,
                    ErrorCode::InvalidValue,
                    "a score is a metric's name or `{ METRIC: { options } }`".into(),
                    format!("metrics: {}", Metric::NAMES.join(", ")),
                );
                return None;
            }
        };
        let metric = match (name, args) {
            ("exact", None) => Metric::Exact,
            ("label", None) => Metric::Label,
            ("token_f1", None) => Metric::TokenF1,
            ("rouge_l", None) => Metric::RougeL,
            ("tests", None) => Metric::Tests,
            ("json_fields", None) => Metric::JsonFields { schema: None },
            ("json_fields", Some(V::Object(o)))
                if o.keys().all(|k| k == "schema") && o.get("schema").is_some_and(V::is_object) =>
            {
                Metric::JsonFields {
                    schema: o.get("schema").cloned(),
                }
            }
            ("judge", Some(V::Object(o)))
                if o.len() == 2
                    && o.get("model").is_some_and(V::is_string)
                    && o.get("prompt").is_some_and(V::is_string) =>
            {
                let pos = self.pos(at);
                Metric::Judge {
                    model: Name {
                        name: o["model"].as_str().unwrap_or_default().to_string(),
                        pos,
                    },
                    prompt: Template {
                        source: o["prompt"].as_str().unwrap_or_default().to_string(),
                        pos,
                    },
                }
            }
            ("judge", _) => {
                self.error(
                    at,
                    1,
                    ErrorCode::InvalidValue,
                    "a judge needs a `model` and a `prompt`".into(),
                    "write `{ judge: { model: qwen2.5-coder-1.5b, prompt: \"...{{ answer }}...\" } }`",
                );
                return None;
            }
            (n, Some(_)) if Metric::NAMES.contains(&n) => {
                self.error(
                    at,
                    1,
                    ErrorCode::InvalidValue,
                    format!("the metric `{n}` takes no options"),
                    format!("write `{n}` alone"),
                );
                return None;
            }
            (n, _) => {
                let (message, help) = unknown(n);
                self.error(at, 1, ErrorCode::InvalidValue, message, help);
                return None;
            }
        };
        Some(metric)
    }
}
