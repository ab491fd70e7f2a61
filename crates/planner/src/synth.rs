//! Synthetic workflows of any size, for benchmarks and property tests: layered DAGs whose
//! steps read one to three steps of earlier layers, mixing llm, tool and value steps the way
//! real workflows do. Deterministic for a given seed, with no dependency on a random crate.

use std::fmt::Write;

/// A small deterministic generator (xorshift64*), enough for shaping test workflows.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A workflow of `steps` steps in layers of `width`, as YAML text. Step `sI` of layer L > 0
/// reads one to three steps of layer L-1 or earlier; every fifth step is a tool step, every
/// seventh a value step, the rest llm steps.
pub fn layered_workflow(steps: usize, width: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let width = width.max(1);
    let mut out = String::with_capacity(steps * 160);
    let _ = writeln!(
        out,
        "name: synthetic-{steps}\ninputs:\n  topic: {{ type: string }}\nbudget:\n  latency: 10m\npolicy:\n  tools: [grep]\nsteps:"
    );
    for i in 0..steps {
        let layer = i / width;
        let mut deps = Vec::new();
        if layer > 0 {
            for _ in 0..1 + rng.below(3) {
                let d = rng.below(layer * width);
                if !deps.contains(&d) {
                    deps.push(d);
                }
            }
        }
        let refs: String = deps
            .iter()
            .map(|d| format!(" {{{{ steps.s{d}.output }}}}"))
            .collect();
        let _ = writeln!(out, "  s{i}:");
        if i % 5 == 4 {
            let _ = writeln!(
                out,
                "    tool: grep\n    args: {{ pattern: \"x{refs}\", path: docs }}"
            );
        } else if i % 7 == 6 {
            let _ = writeln!(out, "    value: \"v{refs}\"");
        } else {
            let _ = writeln!(
                out,
                "    task: summarize\n    prompt: \"Step {i} on {{{{ inputs.topic }}}}:{refs}\"\n    max_tokens: 64"
            );
        }
    }
    let _ = writeln!(
        out,
        "outputs:\n  last: \"{{{{ steps.s{}.output }}}}\"",
        steps.saturating_sub(1)
    );
    out
}

/// A placement problem of `steps` steps in layers of `width` (each reading one to three steps
/// of earlier layers) with six configs per step: three model sizes on two one-at-a-time
/// devices, a slow frugal one and a fast power-hungry one, with figures shaped like the
/// reference profile's. `slo_factor` sets the SLO relative to a lower bound on the makespan:
/// the longer of the critical path and the total work spread over both devices, each step on
/// its fastest config, plus the longest load (`None`: no SLO).
pub fn problem(
    steps: usize,
    width: usize,
    seed: u64,
    slo_factor: Option<f64>,
) -> crate::estimate::Problem {
    use crate::estimate::{Config, Problem, Residency, Resource, StepChoices};
    use crate::figure::Source;
    let mut rng = Rng::new(seed);
    let width = width.max(1);
    let resources = vec![
        Resource {
            name: "cpu".into(),
            exclusive: true,
            memory_gb: Some(24.0),
        },
        Resource {
            name: "cuda:0".into(),
            exclusive: true,
            memory_gb: Some(80.0),
        },
    ];
    // (decode tokens/s, power W, load s, memory GB, quality) per (model, device).
    let figures = [
        [(23.5, 20.0, 0.5, 0.2, 0.4), (400.0, 400.0, 1.0, 0.5, 0.4)],
        [(9.1, 20.0, 2.5, 0.7, 0.55), (300.0, 400.0, 1.5, 1.0, 0.55)],
        [(14.3, 20.0, 6.8, 1.5, 0.7), (200.0, 400.0, 2.5, 2.0, 0.7)],
    ];
    let hourly = [0.02, 2.5];
    let mut residencies = Vec::new();
    for model in &figures {
        for (d, f) in model.iter().enumerate() {
            residencies.push(Residency {
                model: format!("m{}", residencies.len() / 2),
                resource: d,
                load_s: f.2,
                energy_j: f.1 * f.2,
                cost_usd: hourly[d] * f.2 / 3600.0,
                memory_gb: f.3,
            });
        }
    }
    let mut out = Vec::with_capacity(steps);
    let mut fastest_end = vec![0.0f64; steps];
    for i in 0..steps {
        let layer = i / width;
        let mut preds = Vec::new();
        if layer > 0 {
            for _ in 0..1 + rng.below(3) {
                let d = rng.below(layer * width);
                if !preds.contains(&d) {
                    preds.push(d);
                }
            }
        }
        let tokens = 16.0 + rng.below(240) as f64;
        let mut configs = Vec::with_capacity(6);
        for (m, model) in figures.iter().enumerate() {
            for (d, f) in model.iter().enumerate() {
                let latency = tokens / f.0;
                configs.push(Config {
                    model: Some(format!("m{m}")),
                    device: resources[d].name.clone(),
                    resource: Some(d),
                    residency: Some(m * 2 + d),
                    latency_s: latency,
                    energy_j: f.1 * latency,
                    cost_usd: hourly[d] * latency / 3600.0 + f.1 * latency * 0.15 / 3.6e6,
                    quality: Some(f.4),
                    loss: None,
                    basis: None,
                    calls: 1,
                    tokens_in: tokens,
                    tokens_out: tokens,
                    tokens_learned: 0,
                    source: Source::Estimate,
                });
            }
        }
        let fastest = configs
            .iter()
            .map(|c| c.latency_s)
            .fold(f64::INFINITY, f64::min);
        fastest_end[i] = preds.iter().map(|&d| fastest_end[d]).fold(0.0, f64::max) + fastest;
        out.push(StepChoices {
            id: format!("s{i}"),
            configs,
            preds,
            excluded: Vec::new(),
        });
    }
    let work: f64 = out
        .iter()
        .map(|s| {
            s.configs
                .iter()
                .map(|c| c.latency_s)
                .fold(f64::INFINITY, f64::min)
        })
        .sum();
    let critical = fastest_end
        .iter()
        .copied()
        .fold(0.0, f64::max)
        .max(work / 2.0)
        + 6.8;
    Problem {
        steps: out,
        resources,
        residencies,
        budget: crate::spec::Budget {
            latency_s: slo_factor.map(|f| f * critical),
            ..Default::default()
        },
        objective: crate::spec::Objective::Energy,
    }
}
