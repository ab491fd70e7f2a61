//! Online calibration: what a run's model calls really did, folded into the machine's
//! calibration profile so the next plan predicts better. Pure data: the caller reads and
//! writes the file.

use joule_planner::figure::{Figure, Meter as FigureMeter, Source, significant as round};
use joule_planner::profile::{Hardware, ProfileFile, Profiles, StepTokens};

use crate::runtime::Observation;

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
    observations: &[Observation],
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
fn learn_lengths(file: &mut ProfileFile, workflow: &str, observations: &[Observation]) -> usize {
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
                    turns: None,
                });
                file.steps.len() - 1
            }
        };
        let t = &mut file.steps[i];
        let weight = (1.0 / f64::from(t.n + 1)).max(CALIBRATION_WEIGHT);
        t.tokens_in = round(t.tokens_in + weight * (o.tokens_in as f64 - t.tokens_in));
        t.tokens_out = round(t.tokens_out + weight * (o.tokens_out as f64 - t.tokens_out));
        if let Some(turns) = o.turns {
            let turns = f64::from(turns);
            // Runs of the loop are fewer than calls: weigh them as the first calls are.
            let prior = t.turns.unwrap_or(turns);
            t.turns = Some(round(prior + weight.max(0.5) * (turns - prior)));
        }
        t.n += 1;
    }
    observations.len()
}

#[cfg(test)]
mod tests {
    use super::*;

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
            turns: None,
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
            turns: None,
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
        assert_eq!(p.step_tokens("w", "draft", "m").unwrap().turns, None);
    }

    #[test]
    fn calibration_learns_how_many_turns_an_agent_takes() {
        let mut file = ProfileFile::default();
        let last = |turns| Observation {
            step: "research".into(),
            model: "m".into(),
            device: "cpu".into(),
            tokens_in: 300,
            tokens_out: 20,
            ttft_s: None,
            latency_s: 1.0,
            load_s: 0.0,
            turns: Some(turns),
        };
        calibrate(&Profiles::default(), &mut file, "w", &[last(3)]);
        assert_eq!(file.steps[0].turns, Some(3.0));
        // Later loops move it; a loop of one turn pulls it down but not all the way at once.
        calibrate(&Profiles::default(), &mut file, "w", &[last(1)]);
        let turns = file.steps[0].turns.unwrap();
        assert!((1.0..3.0).contains(&turns), "{turns}");
    }
}
