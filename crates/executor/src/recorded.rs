//! Answers from a recorded run: what every attempt of every call site got (failures included,
//! so retries replay too), and the call that was sent, so a replay proves it sent the same
//! prompts. This is how `joule replay` reproduces a run without calling a model.

use std::collections::HashMap;

use joule_call::{Answer, Backend, Call, CallError, CallFuture, Cancel, ConfigRef, OnTokens, Site};

/// Per attempt: the call as sent (JSON) and what came back.
pub type Recording = HashMap<Site, (serde_json::Value, Result<Answer, CallError>)>;

pub struct Recorded {
    pub answers: Recording,
}

impl Recorded {
    /// The configs each step's attempts went to, in order (the planned one, then any
    /// fallback), so a replay sends every call where the run did.
    pub fn configs(&self) -> HashMap<String, Vec<ConfigRef>> {
        let mut sites: Vec<(&Site, &serde_json::Value)> = self
            .answers
            .iter()
            .map(|(s, (call, _))| (s, call))
            .collect();
        sites.sort_by_key(|(s, _)| (s.step.clone(), s.index, s.attempt));
        let mut out: HashMap<String, Vec<ConfigRef>> = HashMap::new();
        for (site, call) in sites {
            let Some(device) = call["device"].as_str() else {
                continue;
            };
            let config = ConfigRef {
                model: call["model"].as_str().map(str::to_string),
                device: device.to_string(),
            };
            let tried = out.entry(site.step.clone()).or_default();
            if !tried.contains(&config) {
                tried.push(config);
            }
        }
        out
    }
}

impl Backend for Recorded {
    fn call<'a>(
        &'a self,
        site: &'a Site,
        call: &'a Call,
        _cancel: &'a Cancel,
        _on_tokens: &'a OnTokens,
    ) -> CallFuture<'a> {
        Box::pin(async move {
            let Some((recorded, answer)) = self.answers.get(site) else {
                return Err(CallError::permanent(format!(
                    "the recorded run has no attempt {} of step `{}`{}",
                    site.attempt,
                    site.step,
                    site.index
                        .map(|i| format!(" element {i}"))
                        .unwrap_or_default()
                )));
            };
            if serde_json::to_value(call).ok().as_ref() != Some(recorded) {
                return Err(CallError::permanent(format!(
                    "replay diverged at step `{}` attempt {}: the call differs from the recorded one",
                    site.step, site.attempt
                )));
            }
            answer.clone()
        })
    }
}
