//! One call site (a step, or one element of a `for_each`) from first attempt to last: the
//! device's semaphore, the backend call under its timeout and tracing span, energy metering,
//! the `output` check, retries with backoff, and fallback to the next config.

use std::sync::Arc;
use std::time::Duration;

use joule_planner::catalog::Catalog;
use joule_planner::estimate::HOST_W;
use joule_planner::spec::OutputSpec;
use tokio::sync::{Semaphore, mpsc};
use tracing::Instrument;

use std::collections::HashMap;

use joule_call::{Answer, Backend, Cache, Call, CallError, OnTokens, Site};

use super::{Cancel, ConfigRef, Event, Figures, Observation, check, energy};
use crate::meter::Method;

/// State shared with the call tasks.
pub(super) struct Shared {
    pub(super) backend: Arc<dyn Backend>,
    pub(super) meters: energy::Meters,
    pub(super) semaphores: HashMap<String, Arc<Semaphore>>,
    pub(super) events: mpsc::UnboundedSender<Event>,
    pub(super) cancel: Cancel,
    pub(super) catalog: Arc<Catalog>,
    pub(super) no_backoff: bool,
    pub(super) cache: Option<Arc<dyn Cache>>,
    pub(super) seed: u64,
    /// The workflow's effective policy, checked again before every call.
    pub(super) policy: joule_planner::spec::Policy,
}

/// Whether the effective policy allows a call: its provider (`local` for this machine's
/// devices, else the endpoint), its model, its tool. The planner never proposes anything else;
/// this is the second check, against plans that did not come from it.
pub fn permitted(policy: &joule_planner::spec::Policy, call: &Call) -> Result<(), String> {
    match call {
        Call::Llm(c) => {
            let provider = joule_planner::dag::provider_of(&c.device);
            if !policy.providers.iter().any(|p| p == provider) {
                return Err(format!(
                    "provider `{provider}` is not allowed by the policy (providers: [{}])",
                    policy.providers.join(", ")
                ));
            }
            if let Some(models) = &policy.models
                && !models.contains(&c.model)
            {
                return Err(format!(
                    "model `{}` is not allowed by the policy (models: [{}])",
                    c.model,
                    models.join(", ")
                ));
            }
        }
        Call::Tool(c) => {
            if !policy.tools.contains(&c.tool) {
                return Err(format!(
                    "tool `{}` is not allowed by the policy (tools: [{}])",
                    c.tool,
                    policy.tools.join(", ")
                ));
            }
            if c.network && !policy.network.contains(&c.tool) {
                return Err(format!("tool `{}` may not use the network", c.tool));
            }
        }
    }
    Ok(())
}

/// One call site: a step, or one element of a `for_each` step.
pub(super) struct Work {
    pub(super) step: usize,
    pub(super) site: Site,
    /// Configs to try in order: the planned one, then fallbacks.
    pub(super) calls: Vec<Call>,
    pub(super) retry: u32,
    pub(super) backoff_s: f64,
    pub(super) timeout_s: Option<f64>,
    pub(super) output: Option<OutputSpec>,
    /// Whether the step said `cache: true`.
    pub(super) cache: bool,
}

pub(super) struct Done {
    pub(super) step: usize,
    pub(super) index: Option<usize>,
    pub(super) result: Result<serde_json::Value, String>,
    pub(super) config: ConfigRef,
    pub(super) figures: Figures,
    pub(super) attempts: u32,
    pub(super) started_s: f64,
    pub(super) ended_s: f64,
    /// How fast the successful model calls ran, for calibrating profiles.
    pub(super) observations: Vec<Observation>,
}

/// Runs one call site: attempts with backoff on each config in turn.
pub(super) async fn run_work(sh: Arc<Shared>, w: Work) -> Done {
    let mut attempts = 0u32;
    let mut figures = Figures::default();
    let mut started_s = None;
    let mut last_error = String::from("no config to run on");
    let mut last_config = ConfigRef::host();
    let now = |sh: &Shared| sh.meters_now();
    for (k, call) in w.calls.iter().enumerate() {
        let config = call.config();
        if k > 0 {
            let _ = sh.events.send(Event::Fallback {
                step: w.site.step.clone(),
                index: w.site.index,
                from: last_config.clone(),
                to: config.clone(),
                reason: last_error.clone(),
            });
        }
        last_config = config.clone();
        if let Err(reason) = permitted(&sh.policy, call) {
            tracing::warn!(step = %w.site.step, %reason, "policy refused a call");
            let _ = sh.events.send(Event::PolicyRefused {
                step: w.site.step.clone(),
                index: w.site.index,
                config: config.clone(),
                reason: reason.clone(),
            });
            last_error = format!("refused by the policy: {reason}");
            continue;
        }
        for attempt in 1..=w.retry + 1 {
            if sh.cancel.is_cancelled() {
                return done(
                    &w,
                    Err("cancelled".into()),
                    last_config,
                    figures,
                    attempts,
                    started_s,
                    now(&sh),
                );
            }
            let mut call = call.clone();
            if let Call::Llm(c) = &mut call
                && attempt > 1
                && c.temperature == 0.0
            {
                // Greedy decoding would repeat the failed answer; sample instead.
                c.temperature = 0.7;
                c.seed = u64::from(attempt);
            }
            let call_json = serde_json::to_value(&call).unwrap_or_default();
            // `cache: true`: an identical call that succeeded before is answered from the store.
            let hit = match &sh.cache {
                Some(cache) if w.cache && attempts == 0 => cache.lookup(&call_json),
                _ => None,
            };
            let cached = hit.is_some();
            let site = Site {
                attempt: attempts + 1,
                ..w.site.clone()
            };
            let Some(sent) = send(&sh, &site, &call, call_json, hit, w.timeout_s).await else {
                return done(
                    &w,
                    Err("cancelled".into()),
                    last_config,
                    figures,
                    attempts,
                    started_s,
                    now(&sh),
                );
            };
            attempts += 1;
            started_s.get_or_insert(sent.begin);
            let (result, f, end) = (sent.result, sent.figures, sent.end);
            figures.absorb(&f);
            let checked: Result<serde_json::Value, CallError> =
                result.clone().and_then(|a| match (&w.output, &call) {
                    (Some(spec), Call::Llm(_)) => check::check(spec, &a.text)
                        .map_err(|e| CallError::transient(format!("output: {e}"))),
                    (_, Call::Llm(_)) => Ok(serde_json::Value::String(a.text.trim().to_string())),
                    _ => Ok(serde_json::Value::String(a.text.trim_end().to_string())),
                });
            let _ = sh.events.send(Event::AttemptEnded {
                step: w.site.step.clone(),
                index: w.site.index,
                attempt: attempts,
                config: config.clone(),
                ok: checked.is_ok(),
                answer: result.as_ref().ok().cloned(),
                error: checked.as_ref().err().map(|e| e.message.clone()),
                transient: checked.as_ref().err().is_some_and(|e| e.transient),
                cached,
                figures: f,
            });
            match checked {
                Ok(v) => {
                    let mut d = done(&w, Ok(v), config.clone(), figures, attempts, started_s, end);
                    if let (Call::Llm(_), false, Some(model)) = (&call, cached, &config.model) {
                        d.observations.push(Observation::of(
                            &w.site.step,
                            model,
                            &config.device,
                            &f,
                        ));
                    }
                    return d;
                }
                Err(e) => {
                    last_error = e.message.clone();
                    if sh.cancel.is_cancelled() {
                        return done(
                            &w,
                            Err("cancelled".into()),
                            config,
                            figures,
                            attempts,
                            started_s,
                            end,
                        );
                    }
                    if !e.transient {
                        break;
                    }
                    if attempt <= w.retry && !sh.no_backoff {
                        let wait = joule_call::backoff(
                            Duration::from_secs_f64(w.backoff_s.max(0.0)),
                            Duration::from_secs(30),
                            attempt,
                            sh.seed ^ u64::from(attempts) ^ (w.step as u64) << 32,
                        );
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = sh.cancel.cancelled() => {}
                        }
                    }
                }
            }
        }
    }
    let message = if attempts > 1 {
        format!("{last_error} (after {attempts} attempts)")
    } else {
        last_error
    };
    done(
        &w,
        Err(message),
        last_config,
        figures,
        attempts,
        started_s,
        sh.meters_now(),
    )
}

/// What one attempt sent got back, and what it cost.
pub(super) struct Sent {
    pub(super) result: Result<Answer, CallError>,
    pub(super) figures: Figures,
    pub(super) begin: f64,
    pub(super) end: f64,
}

/// One attempt of a call, numbered `site.attempt`: a turn on its device's semaphore, the
/// attempt's start event, the backend call under its timeout and span (or the cached answer
/// `hit`, which runs nothing), and its metered figures. `None` when the run was cancelled
/// while the call waited for its device: nothing was sent.
pub(super) async fn send(
    sh: &Shared,
    site: &Site,
    call: &Call,
    call_json: serde_json::Value,
    hit: Option<Answer>,
    timeout_s: Option<f64>,
) -> Option<Sent> {
    let semaphore = sh
        .semaphores
        .get(call.device())
        .cloned()
        .filter(|_| hit.is_none());
    let permit = match &semaphore {
        Some(s) => tokio::select! {
            p = s.clone().acquire_owned() => p.ok(),
            _ = sh.cancel.cancelled() => return None,
        },
        None => None,
    };
    let begin = sh.meters_now();
    let _ = sh.events.send(Event::AttemptStarted {
        step: site.step.clone(),
        index: site.index,
        attempt: site.attempt,
        config: call.config(),
        call: call_json,
    });
    let cached = hit.is_some();
    let busy = (matches!(call, Call::Llm(_)) && !cached).then(|| sh.meters.begin(call.device()));
    let span = span(call, &site.step);
    let result = match hit {
        Some(answer) => Ok(answer),
        None => invoke(sh, site, call, timeout_s, &span).await,
    };
    let energy = busy.map(|b| sh.meters.end(b));
    drop(permit);
    let end = sh.meters_now();
    let mut f = attempt_figures(sh, call, result.as_ref().ok(), energy, end - begin);
    if cached {
        // Nothing ran: no energy, no price (the tokens say what was reused).
        (f.energy_j, f.energy_method, f.cost_usd) = (0.0, None, 0.0);
    }
    span.record("gen_ai.usage.input_tokens", f.tokens_in);
    span.record("gen_ai.usage.output_tokens", f.tokens_out);
    span.record("joule.energy_j", f.energy_j);
    Some(Sent {
        result,
        figures: f,
        begin,
        end,
    })
}

/// The tracing span of a call: the OpenTelemetry GenAI attributes for a model call (usage
/// and energy are recorded when it ends).
fn span(call: &Call, step: &str) -> tracing::Span {
    match call {
        Call::Llm(c) => tracing::info_span!(
            "gen_ai.chat",
            gen_ai.operation.name = "chat",
            gen_ai.request.model = %c.model,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            joule.energy_j = tracing::field::Empty,
            joule.device = %c.device,
            joule.step = %step,
        ),
        Call::Tool(c) => {
            tracing::info_span!("joule.tool", joule.tool = %c.tool, joule.step = %step)
        }
    }
}

/// One backend call under the step's timeout (tools enforce theirs themselves, killing the
/// process group), reporting tokens as they come.
async fn invoke(
    sh: &Shared,
    site: &Site,
    call: &Call,
    timeout_s: Option<f64>,
    span: &tracing::Span,
) -> Result<Answer, CallError> {
    let cancel = sh.cancel.child();
    let on_tokens: OnTokens = {
        let (events, step, index) = (sh.events.clone(), site.step.clone(), site.index);
        Arc::new(move |tokens| {
            let _ = events.send(Event::Progress {
                step: step.clone(),
                index,
                tokens,
            });
        })
    };
    let work = sh
        .backend
        .call(site, call, &cancel, &on_tokens)
        .instrument(span.clone());
    match timeout_s {
        Some(t) if matches!(call, Call::Llm(_)) => {
            match tokio::time::timeout(Duration::from_secs_f64(t), work).await {
                Ok(r) => r,
                Err(_) => {
                    // Stops a local generation at its next token.
                    cancel.cancel();
                    Err(CallError::transient(format!("timed out after {t} s")))
                }
            }
        }
        _ => work.await,
    }
}

impl Shared {
    fn meters_now(&self) -> f64 {
        self.meters.elapsed()
    }
}

pub(super) fn done(
    w: &Work,
    result: Result<serde_json::Value, String>,
    config: ConfigRef,
    figures: Figures,
    attempts: u32,
    started_s: Option<f64>,
    ended_s: f64,
) -> Done {
    Done {
        step: w.step,
        index: w.site.index,
        result,
        config,
        figures,
        attempts,
        started_s: started_s.unwrap_or(ended_s),
        ended_s,
        observations: Vec::new(),
    }
}

/// Tokens, energy and cost of one attempt. Energy comes from the device's meter (labelled with
/// its method); a tool's is its CPU time at one busy core's power, labelled `estimate`. Cost is
/// the endpoint's token prices, or for a local device its electricity plus its hourly price.
pub(super) fn attempt_figures(
    sh: &Shared,
    call: &Call,
    answer: Option<&Answer>,
    energy: Option<crate::meter::Energy>,
    wall_s: f64,
) -> Figures {
    let mut f = Figures {
        latency_s: wall_s,
        ..Figures::default()
    };
    if let Some(a) = answer {
        f.tokens_in = a.tokens_in;
        f.tokens_out = a.tokens_out;
        f.tokens_cached = a.tokens_cached;
        f.ttft_s = a.ttft_s;
        f.load_s = a.load_s;
    }
    match call {
        Call::Llm(c) => {
            if let Some(e) = energy {
                f.energy_j = e.joules;
                f.energy_method = Some(e.method);
            }
            let electricity = sh.catalog.prices.electricity_usd_per_kwh.value / 3.6e6;
            if let Some(ep) = sh.catalog.endpoint(&c.device) {
                f.cost_usd = f.tokens_in as f64 * ep.usd_per_million_input.value / 1e6
                    + f.tokens_out as f64 * ep.usd_per_million_output.value / 1e6;
            } else {
                let hourly = sh
                    .catalog
                    .device(&c.device)
                    .map_or(0.0, |d| d.usd_per_hour.value);
                f.cost_usd = f.energy_j * electricity + hourly * wall_s / 3600.0;
            }
        }
        Call::Tool(_) => {
            let cpu = answer.and_then(|a| a.cpu_s).unwrap_or(0.0);
            f.energy_j = cpu * HOST_W;
            f.energy_method = Some(Method::Estimate);
            f.cost_usd = f.energy_j * sh.catalog.prices.electricity_usd_per_kwh.value / 3.6e6;
        }
    }
    f
}
