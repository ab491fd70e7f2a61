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
