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

use joule_planner::figure::{Figure, Meter as FigureMeter, Source};
use joule_planner::profile::{Hardware, ProfileFile, Profiles, StepTokens};

use crate::backend::local::{Flow, LoadedModel, LocalError, Prompt, Request};
use crate::meter::{self, Method};

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
    say: &mut dyn FnMut(&str),
) -> Result<Measured, ProfileError> {
    let device = crate::backend::local::device(Some(device_id))?;
    say("loading");
    let mut loads = Vec::new();
    let mut memory = Vec::new();
    let mut model = None;
    for _ in 0..settings.loads.max(1) {
        drop(model.take());
        let before = resident_bytes();
        let started = Instant::now();
        let m = LoadedModel::load(id, path, &device)?;
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
    endpoint: &crate::backend::openai::OpenAiBackend,
    name: &str,
    model: &str,
    settings: &Settings,
    say: &mut (dyn FnMut(&str) + Send),
) -> Result<Measured, ProfileError> {
    use crate::openai::ChatRequest;
    let ask = async |text: String, max_tokens: usize| {
        let mut request = ChatRequest::user(model, &text, max_tokens as u64, true);
        request.temperature = Some(0.0);
        request.stream_options = Some(crate::openai::StreamOptions {
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
        value: round(value),
        source: Source::Measured,
        meter: Some(FigureMeter::Clock),
        n: Some(stats.n as u32),
        note: Some(format!("joule profile: {what}, {}", stats.spread())),
    })
}

fn round(v: f64) -> f64 {
    let scale = 10f64.powi(4 - v.abs().max(1e-12).log10().ceil() as i32);
    (v * scale).round() / scale
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
                value: round(self.memory_gb),
                source: Source::Measured,
                meter: None,
                n: Some(self.load_s.n as u32),
                note: Some("joule profile: growth of the resident set across a load".into()),
            }),
            active_w: (measured_power
                && self.active_w.median.is_finite()
                && self.active_w.median > 0.0)
                .then(|| Figure {
                    value: round(self.active_w.median),
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
                value: round(o.max(1e-4)),
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

/// Weight of one observation in the moving estimate.
pub const CALIBRATION_WEIGHT: f64 = 0.2;
/// Fewest prompt tokens a call needs to say something about prefill speed.
pub const MIN_PREFILL_TOKENS: u64 = 32;
/// Fewest generated tokens a call needs to say something about decode speed.
pub const MIN_DECODE_TOKENS: u64 = 16;
/// One observation moves a figure at most this factor up or down.
const CALIBRATION_BOUND: f64 = 2.0;

/// Online calibration: folds what a run's model calls really did into `file` (the calibration
/// profile), as a bounded moving estimate per (model, device) of prefill and decode speed.
///
/// A figure that is not yet measured (a published or estimated one, as the planner used it
/// from `current`) is replaced by the first observation: a measurement beats a guess, as
/// everywhere in profiles. After that each observation is clamped to within 2x of the current
/// figure and moves it by a weight of 1/(n+1), never below [`CALIBRATION_WEIGHT`]: a running
/// mean while evidence is thin, then a moving estimate that follows real change, and no single
/// odd run (a cold cache, a busy machine) can swing the plan. Returns how many figures changed.
pub fn calibrate(
    current: &Profiles,
    file: &mut ProfileFile,
    workflow: &str,
    observations: &[crate::runtime::Observation],
) -> usize {
    let mut changed = learn_lengths(file, workflow, observations);
    // The first call after a load runs cold (allocations, page faults), and a handful of
    // tokens time the call's overheads more than the model's speed: neither says how fast
    // the next call will be.
    for o in observations.iter().filter(|o| o.load_s == 0.0) {
        let prefill = o
            .ttft_s
            .filter(|t| *t > 0.0 && o.tokens_in >= MIN_PREFILL_TOKENS)
            .map(|t| o.tokens_in as f64 / t);
        let decode_s = o.latency_s - o.ttft_s.unwrap_or(0.0);
        let decode = (o.tokens_out >= MIN_DECODE_TOKENS && decode_s > 0.0)
            .then(|| (o.tokens_out - 1) as f64 / decode_s);
        let base = current.hardware(&o.model, &o.device);
        let entry = match file
            .hardware
            .iter()
            .position(|h| h.model == o.model && h.device == o.device)
        {
            Some(i) => &mut file.hardware[i],
            None => {
                file.hardware.push(Hardware {
                    model: o.model.clone(),
                    device: o.device.clone(),
                    ..Hardware::default()
                });
                file.hardware.last_mut().expect("just pushed")
            }
        };
        for (slot, seen, start, what) in [
            (
                &mut entry.prefill_tps,
                prefill,
                base.and_then(|b| b.prefill_tps.as_ref()),
                "prefill tok/s",
            ),
            (
                &mut entry.decode_tps,
                decode,
                base.and_then(|b| b.decode_tps.as_ref()),
                "decode tok/s",
            ),
        ] {
            let Some(seen) = seen.filter(|v| v.is_finite() && *v > 0.0) else {
                continue;
            };
            let measured = |f: &Figure| f.source == Source::Measured;
            let (value, n) = match slot.as_ref().or(start).filter(|f| measured(f)) {
                None => (seen, 0),
                Some(f) => {
                    let n = f.n.unwrap_or(1).max(1);
                    let bounded =
                        seen.clamp(f.value / CALIBRATION_BOUND, f.value * CALIBRATION_BOUND);
                    let weight = (1.0 / f64::from(n + 1)).max(CALIBRATION_WEIGHT);
                    (f.value + weight * (bounded - f.value), n)
                }
            };
            *slot = Some(Figure {
                value: round(value),
                source: Source::Measured,
                meter: Some(FigureMeter::Clock),
                n: Some(n + 1),
                note: Some(format!(
                    "calibrated from {} run observation(s) of {what}: moving estimate (weight {CALIBRATION_WEIGHT}, each within {CALIBRATION_BOUND}x)",
                    n + 1
                )),
            });
            changed += 1;
        }
    }
    changed
}

/// Learns each step's token counts per call (cold calls count too: a load does not change
/// what was asked or answered), as the same moving estimate as the speeds: a running mean
/// while observations are few, then a weight of [`CALIBRATION_WEIGHT`]. Lengths are not
/// clamped; an answer is bounded by `max_tokens` anyway.
fn learn_lengths(
    file: &mut ProfileFile,
    workflow: &str,
    observations: &[crate::runtime::Observation],
) -> usize {
    for o in observations {
        let i = match file
            .steps
            .iter()
            .position(|t| t.workflow == workflow && t.step == o.step && t.model == o.model)
        {
            Some(i) => i,
            None => {
                file.steps.push(StepTokens {
                    workflow: workflow.to_string(),
                    step: o.step.clone(),
                    model: o.model.clone(),
                    tokens_in: 0.0,
                    tokens_out: 0.0,
                    n: 0,
                });
                file.steps.len() - 1
            }
        };
        let t = &mut file.steps[i];
        let weight = (1.0 / f64::from(t.n + 1)).max(CALIBRATION_WEIGHT);
        t.tokens_in = round(t.tokens_in + weight * (o.tokens_in as f64 - t.tokens_in));
        t.tokens_out = round(t.tokens_out + weight * (o.tokens_out as f64 - t.tokens_out));
        t.n += 1;
    }
    observations.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Observation;

    #[test]
    fn calibration_moves_a_wrong_figure_toward_what_runs_measure_and_stays_bounded() {
        // The profile claims 5 tok/s of prefill; the runs see 100.
        let text = "name: wrong\nhardware:\n  - { model: m, device: cpu, prefill_tps: { value: 5, source: published }, decode_tps: { value: 20, source: published } }\n";
        let mut current = Profiles::default();
        current
            .merge(Profiles::parse(&joule_planner::SourceFile::new("wrong.yaml", text)).unwrap());
        let seen = Observation {
            step: "s".into(),
            model: "m".into(),
            device: "cpu".into(),
            tokens_in: 200,
            tokens_out: 41,
            ttft_s: Some(2.0),
            latency_s: 4.0,
            load_s: 0.0,
        };
        let mut file = ProfileFile {
            name: "calibration".into(),
            ..ProfileFile::default()
        };
        let prefill = |file: &ProfileFile| file.hardware[0].prefill_tps.clone().unwrap();
        let observe = |file: &mut ProfileFile, tokens_in: u64| {
            let o = Observation {
                tokens_in,
                ..seen.clone()
            };
            // Prefill, decode, and the step's token counts.
            assert_eq!(calibrate(&current, file, "w", &[o]), 3);
        };
        // The first observation replaces the published guess: 200 tokens in 2 s.
        observe(&mut file, 200);
        assert_eq!(prefill(&file).value, 100.0);
        assert_eq!(prefill(&file).source, Source::Measured);
        // Decode: 40 tokens after the first in 4.0 - 2.0 = 2 s, 20 tok/s as claimed.
        assert_eq!(file.hardware[0].decode_tps.as_ref().unwrap().value, 20.0);
        // An outlier (1,000 tok/s) is clamped to 2x and weighed as one of two observations.
        observe(&mut file, 2000);
        assert_eq!(prefill(&file).value, 150.0);
        // Steady observations bring it back toward what runs see.
        let mut values = Vec::new();
        for _ in 0..10 {
            observe(&mut file, 200);
            values.push(prefill(&file).value);
        }
        assert!(values.windows(2).all(|w| w[1] < w[0]), "{values:?}");
        assert!(values[9] < 110.0, "{values:?}");
        assert_eq!(prefill(&file).n, Some(12));
        // A cold call (it paid a model load) or a short one teaches nothing.
        let cold = Observation {
            load_s: 1.0,
            ..seen.clone()
        };
        let short = Observation {
            tokens_in: 8,
            tokens_out: 3,
            ..seen.clone()
        };
        let before = (prefill(&file), file.hardware[0].decode_tps.clone());
        assert_eq!(calibrate(&current, &mut file, "w", &[cold, short]), 2);
        assert_eq!(
            (prefill(&file), file.hardware[0].decode_tps.clone()),
            before
        );
    }

    #[test]
    fn calibration_learns_how_long_each_steps_answers_are() {
        let mut file = ProfileFile::default();
        let call = |tokens_out| Observation {
            step: "draft".into(),
            model: "m".into(),
            device: "cpu".into(),
            tokens_in: 100,
            tokens_out,
            ttft_s: None,
            latency_s: 1.0,
            load_s: 0.0,
        };
        calibrate(&Profiles::default(), &mut file, "w", &[call(40), call(60)]);
        let t = &file.steps[0];
        assert_eq!(
            (t.workflow.as_str(), t.step.as_str(), t.model.as_str()),
            ("w", "draft", "m")
        );
        assert_eq!((t.tokens_in, t.tokens_out, t.n), (100.0, 50.0, 2));
        // Another workflow's step of the same name is its own entry.
        calibrate(&Profiles::default(), &mut file, "other", &[call(10)]);
        assert_eq!(file.steps.len(), 2);
        // The planner reads it: answers of 50 tokens, not `max_tokens`.
        let mut p = Profiles::default();
        p.merge(file);
        assert_eq!(p.step_tokens("w", "draft", "m").unwrap().tokens_out, 50.0);
        assert_eq!(p.step_tokens("w", "draft", "another-model").unwrap().n, 2);
        assert!(p.step_tokens("w", "classify", "m").is_none());
    }

    #[test]
    fn stats_take_the_median_and_range() {
        let s = Stats::of(&[3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Stats::of(&[1.0, 2.0]).median, 1.5);
        assert!(Stats::of(&[]).median.is_nan());
    }

    #[test]
    fn figures_keep_four_significant_digits() {
        assert_eq!(round(123.456_78), 123.5);
        assert_eq!(round(0.012_345_6), 0.01235);
    }
}
