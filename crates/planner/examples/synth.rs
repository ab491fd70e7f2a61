//! Prints a synthetic layered workflow: `cargo run -p joule-planner --example synth -- STEPS [WIDTH] [SEED]`.
//! Used to time `joule validate` on large workflows from the shell.

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let steps = args.next().and_then(Result::ok).unwrap_or(1_000) as usize;
    let width = args.next().and_then(Result::ok).unwrap_or(10) as usize;
    let seed = args.next().and_then(Result::ok).unwrap_or(7);
    print!(
        "{}",
        joule_planner::synth::layered_workflow(steps, width, seed)
    );
}
