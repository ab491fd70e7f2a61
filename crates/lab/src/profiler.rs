//! The profiler: measures a (model, device) the way the planner's cost model reads it, and
//! writes the figures as a profile file whose every number says how it was obtained.
//!
//! For each local model: load time (fresh loads), resident memory (growth of this process's
//! resident set across a load), prefill speed at several prompt lengths (one forward pass over
//! a prompt of exactly that many tokens), time to first token, decode speed, and energy per
//! generated token with the device's meter. Speeds and times are `measured` with the `clock`;
//! power is `measured` only when the meter measures (RAPL, NVML), otherwise it is labelled
//! `estimate`, because an estimate from profiled power is not a measurement. Each figure is the
//! median of the repeats, after one warm-up, and its note gives the spread.

use std::time::Instant;

use joule_planner::figure::{Figure, Meter as FigureMeter, Source, significant};
use joule_planner::profile::Hardware;

use joule_executor::meter::{self, Method};
use joule_models::local::{Flow, LoadOptions, LoadedModel, LocalError, Prompt, Request};
use joule_models::openai::OpenAiBackend;
use joule_models::openai::wire::{ChatRequest, StreamOptions};

/// How much to measure.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Prompt lengths (tokens) prefill is measured at.
    pub prompt_lengths: Vec<usize>,
    /// Tokens generated when measuring decode.
    pub decode_tokens: usize,
    /// Timed repeats of each measurement (after one warm-up).
    pub repeats: usize,
    /// Fresh loads timed.
    pub loads: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            prompt_lengths: vec![32, 128, 512],
            decode_tokens: 64,
            repeats: 3,
            loads: 2,
        }
    }
}

/// Median and range of repeated measurements.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stats {
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Self {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
            n,
        }
    }

    fn spread(&self) -> String {
        format!(
            "median of {}, range {:.3}-{:.3}",
            self.n, self.min, self.max
        )
    }
}

/// What was measured for one (model, device).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    pub model: String,
    pub device: String,
    pub load_s: Stats,
    pub memory_gb: f64,
    /// (prompt tokens, prefill tokens per second).
    pub prefill_tps: Vec<(usize, Stats)>,
    /// Time to first token at the middle prompt length.
    pub ttft_s: Stats,
    pub decode_tps: Stats,
    pub energy_per_token_j: Stats,
    /// Device power while generating: energy over time of the decode runs.
    pub active_w: Stats,
    pub power_method: Method,
    /// Fixed seconds of each call (network, queueing): an endpoint's, from a fit of time to
    /// first token against prompt length; none for a local device.
    pub overhead_s: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error("{0}")]
    Setup(String),
}

/// Resident set size of this process, bytes (Linux `/proc/self/statm`).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the running system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(1) as u64)
}

/// A prompt of exactly `n` tokens of ordinary English.
fn prompt_of(model: &LoadedModel, n: usize) -> Result<Vec<u32>, LocalError> {
    let words = "the quick brown fox jumps over the lazy dog while a small bird sings ";
    let mut ids = model.tokenizer.encode(&words.repeat(n / 4 + 8))?;
    ids.truncate(n);
    Ok(ids)
}

fn request(tokens: Vec<u32>, max_tokens: usize) -> Request {
    Request {
        prompt: Prompt::Tokens(tokens),
        ignore_eos: true,
        ..Request::text("", max_tokens)
    }
}

/// Measures one local model on one device. `say` is told what is being measured, for a
/// progress display.
/// `assumed_w` is the device power an `estimate` meter charges where no real meter exists.
pub fn profile_local(
    id: &str,
    path: &std::path::Path,
    device_id: &str,
    assumed_w: f64,
    settings: &Settings,
    options: LoadOptions,
    say: &mut dyn FnMut(&str),
) -> Result<Measured, ProfileError> {
    let device = joule_models::local::device(Some(device_id))?;
    say("loading");
    let mut loads = Vec::new();
    let mut memory = Vec::new();
    let mut model = None;
    for _ in 0..settings.loads.max(1) {
        drop(model.take());
        let before = resident_bytes();
        let started = Instant::now();
        let m = LoadedModel::load(id, path, &device, options)?;
        loads.push(started.elapsed().as_secs_f64());
        if let (Some(a), Some(b)) = (before, resident_bytes()) {
            memory.push(b.saturating_sub(a) as f64 / 1e9);
        }
        model = Some(m);
    }
    let model = model.expect("loaded at least once");
    let context = model.context;
    let run = |req: &Request| model.generate(req, &mut |_| Flow::Continue);

    // Warm-up: first passes allocate and fault pages in.
    say("warming up");
    run(&request(prompt_of(&model, 16)?, 4))?;

    let mut prefill = Vec::new();
    let mut ttft_mid = Stats::of(&[]);
    let middle = settings
        .prompt_lengths
        .get(settings.prompt_lengths.len() / 2)
        .copied();
    for &len in &settings.prompt_lengths {
        if len + 1 > context {
            continue;
        }
        say(&format!("prefill {len} tokens"));
        let prompt = prompt_of(&model, len)?;
        let mut tps = Vec::new();
        let mut ttft = Vec::new();
        for _ in 0..settings.repeats.max(1) {
            let g = run(&request(prompt.clone(), 1))?;
            tps.push(g.prefill_tokens_per_s);
            ttft.push(g.ttft_s);
        }
        if Some(len) == middle {
            ttft_mid = Stats::of(&ttft);
        }
        prefill.push((len, Stats::of(&tps)));
    }

    say(&format!("decode {} tokens", settings.decode_tokens));
    let meter = meter::for_device(device_id, assumed_w);
    let power_method = meter.method();
    let mut decode = Vec::new();
    let mut per_token = Vec::new();
    let mut watts = Vec::new();
    let prompt = prompt_of(&model, 8)?;
    for _ in 0..settings.repeats.max(1) {
        let a = meter
            .sample()
            .map_err(|e| ProfileError::Setup(e.to_string()))?;
        let g = run(&request(prompt.clone(), settings.decode_tokens))?;
        let b = meter
            .sample()
            .map_err(|e| ProfileError::Setup(e.to_string()))?;
        decode.push(g.decode_tokens_per_s);
        let joules = meter.joules(&a, &b);
        if g.completion_tokens > 0 {
            per_token.push(joules / g.completion_tokens as f64);
        }
        let secs = b.at.duration_since(a.at).as_secs_f64();
        if secs > 0.0 {
            watts.push(joules / secs);
        }
    }
    Ok(Measured {
        model: id.to_string(),
        device: device_id.to_string(),
        load_s: Stats::of(&loads),
        memory_gb: Stats::of(&memory).median,
        prefill_tps: prefill,
        ttft_s: ttft_mid,
        decode_tps: Stats::of(&decode),
        energy_per_token_j: Stats::of(&per_token),
        active_w: Stats::of(&watts),
        power_method,
        overhead_s: None,
    })
}

/// Ordinary English of about `n` tokens (an endpoint's tokenizer is unknown; its usage
/// report gives the real count).
fn text_of(n: usize) -> String {
    let words = "the quick brown fox jumps over the lazy dog while a small bird sings ";
    words
        .split(' ')
        .cycle()
        .take(n)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Least squares of y = a + b·x.
fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    (sxx > 0.0).then(|| {
        let b = sxy / sxx;
        (my - b * mx, b)
    })
}

/// Measures one model behind an OpenAI-compatible endpoint, through the same HTTP client runs
/// use. Time to first token is measured at each prompt length; a straight-line fit gives the
/// fixed overhead of a call (intercept) and the prefill speed (inverse slope), and when the
/// slope is lost in the network's noise only the overhead is written. Decode speed is the
/// tokens after the first over the time after the first. Power cannot be measured from
/// outside, so none is written: the profile keeps the labelled estimate or published figure.
pub async fn profile_endpoint(
    endpoint: &OpenAiBackend,
    name: &str,
    model: &str,
    settings: &Settings,
    say: &mut (dyn FnMut(&str) + Send),
) -> Result<Measured, ProfileError> {
    let ask = async |text: String, max_tokens: usize| {
        let mut request = ChatRequest::user(model, &text, max_tokens as u64, true);
        request.temperature = Some(0.0);
        request.stream_options = Some(StreamOptions {
            include_usage: true,
        });
        endpoint
            .chat(&request, &mut |_| {})
            .await
            .map_err(|e| ProfileError::Setup(format!("{name}: {e}")))
    };
    say("warming up");
    ask(text_of(16), 4).await?;
    let mut points = Vec::new();
    let mut ttft_mid = Stats::of(&[]);
    let middle = settings
        .prompt_lengths
        .get(settings.prompt_lengths.len() / 2)
        .copied();
    for &len in &settings.prompt_lengths {
        say(&format!("time to first token, about {len} prompt tokens"));
        let mut ttft = Vec::new();
        let mut tokens = len as f64;
        for _ in 0..settings.repeats.max(1) {
            let c = ask(text_of(len), 1).await?;
            ttft.push(c.ttft_s);
            if let Some(u) = &c.usage {
                tokens = u.prompt_tokens as f64;
            }
        }
        let s = Stats::of(&ttft);
        if Some(len) == middle {
            ttft_mid = s;
        }
        points.push((tokens, s.median));
    }
    let line = fit(&points);
    let overhead = line.map_or_else(
        || points.first().map_or(f64::NAN, |p| p.1),
        |(a, _)| a.max(0.0),
    );
    let prefill_tps: Vec<(usize, Stats)> = match line {
        Some((_, slope)) if slope > 1e-6 => {
            let tps = 1.0 / slope;
            vec![(
                middle.unwrap_or(0),
                Stats {
                    median: tps,
                    min: tps,
                    max: tps,
                    n: points.len(),
                },
            )]
        }
        _ => Vec::new(),
    };

    say(&format!("decode {} tokens", settings.decode_tokens));
    let mut decode = Vec::new();
    for _ in 0..settings.repeats.max(1) {
        let c = ask(
            "Count from 1 to 500, numbers separated by spaces, nothing else.".into(),
            settings.decode_tokens,
        )
        .await?;
        let out = c.usage.as_ref().map_or(0, |u| u.completion_tokens);
        let after_first = c.wall_s - c.ttft_s;
        if out >= 2 && after_first > 0.0 {
            decode.push((out - 1) as f64 / after_first);
        }
    }
    Ok(Measured {
        model: model.to_string(),
        device: name.to_string(),
        load_s: Stats::of(&[]),
        memory_gb: f64::NAN,
        prefill_tps,
        ttft_s: ttft_mid,
        decode_tps: Stats::of(&decode),
        energy_per_token_j: Stats::of(&[]),
        active_w: Stats::of(&[]),
        power_method: Method::Estimate,
        overhead_s: Some(overhead).filter(|o| o.is_finite()),
    })
}

fn clock(value: f64, stats: &Stats, what: &str) -> Option<Figure> {
    value.is_finite().then(|| Figure {
        value: significant(value),
        source: Source::Measured,
        meter: Some(FigureMeter::Clock),
        n: Some(stats.n as u32),
        note: Some(format!("joule profile: {what}, {}", stats.spread())),
    })
}

impl Measured {
    /// The profile entry the planner reads. Prefill speed is the one at the middle prompt
    /// length (the others are in its note). Power is written only when a real meter (RAPL,
    /// NVML) measured it: an estimate would just repeat the power it assumed.
    pub fn hardware(&self) -> Hardware {
        let mid = self.prefill_tps.get(self.prefill_tps.len() / 2);
        let all: Vec<String> = self
            .prefill_tps
            .iter()
            .map(|(len, s)| format!("pp{len} {:.1}", s.median))
            .collect();
        let measured_power = matches!(self.power_method, Method::Rapl | Method::Nvml);
        Hardware {
            model: self.model.clone(),
            device: self.device.clone(),
            prefill_tps: mid.and_then(|(len, s)| {
                clock(
                    s.median,
                    s,
                    &format!("prefill of {len} tokens (tok/s: {})", all.join(", ")),
                )
            }),
            decode_tps: clock(self.decode_tps.median, &self.decode_tps, "decode tok/s"),
            ttft_s: clock(self.ttft_s.median, &self.ttft_s, "time to first token"),
            load_s: clock(self.load_s.median, &self.load_s, "fresh load"),
            memory_gb: (self.memory_gb.is_finite() && self.memory_gb > 0.0).then(|| Figure {
                value: significant(self.memory_gb),
                source: Source::Measured,
                meter: None,
                n: Some(self.load_s.n as u32),
                note: Some("joule profile: growth of the resident set across a load".into()),
            }),
            active_w: (measured_power
                && self.active_w.median.is_finite()
                && self.active_w.median > 0.0)
                .then(|| Figure {
                    value: significant(self.active_w.median),
                    source: Source::Measured,
                    meter: Some(if self.power_method == Method::Nvml {
                        FigureMeter::Nvml
                    } else {
                        FigureMeter::Rapl
                    }),
                    n: Some(self.active_w.n as u32),
                    note: Some(format!(
                        "joule profile: energy over time while decoding ({:.3} J/token), {}",
                        self.energy_per_token_j.median,
                        self.active_w.spread()
                    )),
                }),
            overhead_s: self.overhead_s.map(|o| Figure {
                value: significant(o.max(1e-4)),
                source: Source::Measured,
                meter: Some(FigureMeter::Clock),
                n: Some(self.ttft_s.n as u32),
                note: Some(
                    "joule profile: intercept of time to first token against prompt length".into(),
                ),
            }),
            idle_w: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_the_median_and_range() {
        let s = Stats::of(&[3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Stats::of(&[1.0, 2.0]).median, 1.5);
        assert!(Stats::of(&[]).median.is_nan());
    }
}
