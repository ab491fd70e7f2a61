//! `joule tune` with the real small models: interrupted with Ctrl-C (SIGINT) after its first
//! finished run, it continues from its journal without redoing a run, and writes step-level
//! figures (n, standard errors, the paired loss against the reference) that the planner then
//! shows it used.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use crate::support::{ensure_smol, joule, repo, run_in};

const WORKFLOW: &str = r#"name: tune-tiny
inputs:
  ticket: { type: string }
policy: { providers: [local] }
steps:
  classify:
    task: classify
    prompt: "Is this about billing or shipping? Answer with one word. {{ inputs.ticket }}"
    max_tokens: 4
    output: [billing, shipping]
  label:
    value: "{{ steps.classify.output }}"
  thanks:
    task: write
    prompt: "Thank the customer for writing about {{ steps.classify.output }}."
    max_tokens: 4
outputs:
  category: "{{ steps.label.output }}"
  thanks: "{{ steps.thanks.output }}"
examples:
  file: tickets.jsonl
  score: { category: label }
"#;

const EXAMPLES: &str = concat!(
    r#"{"id": "t1", "inputs": {"ticket": "I was charged twice this month."}, "expected": "billing"}"#,
    "\n",
    r#"{"id": "t2", "inputs": {"ticket": "My parcel has not arrived yet."}, "expected": "shipping"}"#,
    "\n",
    r#"{"id": "t3", "inputs": {"ticket": "Please refund the second payment on my card."}, "expected": "billing"}"#,
    "\n",
);

const MODELS: &str = "smollm2-135m,qwen2.5-coder-0.5b";

fn journal_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn tune_continues_after_an_interruption_and_the_planner_uses_its_figures() {
    ensure_smol();
    let (code, out, err) = run_in(&repo(), &["models", "fetch", "qwen2.5-coder-0.5b"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("tiny.yaml");
    std::fs::write(&wf, WORKFLOW).unwrap();
    std::fs::write(dir.path().join("tickets.jsonl"), EXAMPLES).unwrap();
    let journal = dir.path().join("journal.jsonl");
    let profile = dir.path().join("tuned.yaml");
    let args = [
        "tune",
        wf.to_str().unwrap(),
        "--models",
        MODELS,
        "--journal",
        journal.to_str().unwrap(),
        "--out",
        profile.to_str().unwrap(),
    ];

    // Interrupted as soon as its first run is in the journal (it prints a line per run).
    let mut child = joule()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let first_run = line.contains("[   1/6]");
        seen.push(line);
        if first_run {
            // SAFETY: signalling our own child process by its pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the tune finished before it was interrupted: {seen:?}"
    );
    let before = journal_lines(&journal);
    assert!(
        !before.is_empty() && before.len() < 6,
        "{} runs kept after the interruption",
        before.len()
    );

    // Run again: only what is missing runs.
    let (code, stdout, stderr) = run_in(dir.path(), &[&args[..], &["--json"]].concat());
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["finished"], true);
    assert_eq!(json["ran"].as_u64().unwrap() as usize, 6 - before.len());
    let after = journal_lines(&journal);
    assert_eq!(after.len(), 6, "3 examples x (reference + one other model)");
    let mut keys: Vec<String> = after
        .iter()
        .map(|e| format!("{} {} {}", e["example"], e["step"], e["model"]))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 6, "no run is done twice: {keys:?}");
    // The changed runs reuse nothing of the reference's `classify` (it is the changed step)
    // and the reference runs kept their answers for the changed ones to reuse.
    assert!(
        after
            .iter()
            .filter(|e| e["step"].is_null())
            .all(|e| e["answers"]["classify"].is_string())
    );

    // The figures: the reference (the larger model) and the paired loss of the smaller one,
    // for both steps; `thanks` is read by no scored output, so it ran only in the reference
    // runs and its loss is zero by construction.
    let figures = json["figures"].as_array().unwrap();
    assert_eq!(figures.len(), 4, "{figures:?}");
    let of = |step: &str, model: &str| {
        figures
            .iter()
            .find(|f| f["step"] == step && f["model"] == model)
            .unwrap_or_else(|| panic!("{step} on {model}: {figures:?}"))
    };
    let free = of("thanks", "smollm2-135m");
    assert_eq!(free["loss"], 0.0);
    assert_eq!(free["loss_se"], 0.0);
    assert_eq!(free["n"], 3);
    let small = of("classify", "smollm2-135m");
    assert_eq!(small["reference"], "qwen2.5-coder-0.5b");
    assert_eq!(small["n"], 3);
    let reference = of("classify", "qwen2.5-coder-0.5b");
    let loss = small["loss"].as_f64().unwrap();
    let gap = reference["value"].as_f64().unwrap() - small["value"].as_f64().unwrap();
    assert!((loss - gap).abs() < 1e-3, "paired mean {loss} vs {gap}");

    // The planner reads them: the plan says the step's figure is the tuned one, from 3 items.
    let (code, stdout, stderr) = run_in(
        dir.path(),
        &[
            "plan",
            wf.to_str().unwrap(),
            "--profiles",
            profile.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let basis = &plan["steps"][0]["quality_basis"];
    assert_eq!(basis["n"], 3, "{basis}");
    assert!(
        basis["level"] == "step" || basis["level"] == "reference",
        "{basis}"
    );

    // A run given the right answer is scored and the figure its plan used learns from it.
    // Without `thanks` exactly one figure is observed whichever model `classify` gets: its
    // reference's when it stays there, the changed one's otherwise.
    let start = WORKFLOW.find("  thanks:").unwrap();
    let end = WORKFLOW.find("outputs:").unwrap();
    let lean = format!("{}{}", &WORKFLOW[..start], &WORKFLOW[end..])
        .replace("  thanks: \"{{ steps.thanks.output }}\"\n", "");
    std::fs::write(dir.path().join("lean.yaml"), lean).unwrap();
    let machine = dir.path().join("machine");
    let run = |expected: &str| {
        joule()
            .current_dir(dir.path())
            .env("JOULE_PROFILES_DIR", &machine)
            .args(["run", "lean.yaml", "--no-store", "--json", "--profiles"])
            .arg(&profile)
            .args(["--input", "ticket=I was charged twice this month."])
            .args(["--expected", expected])
            .output()
            .unwrap()
    };
    let bad = run(r#"{"reply": "billing"}"#);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("--expected") && err.contains("category"),
        "{err}"
    );
    let out = run(r#""billing""#);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("1 tuned figure(s) learned from it"), "{err}");
    let calibration =
        joule_planner::profile::Profiles::load(&machine.join("calibration.yaml")).unwrap();
    let learned: Vec<_> = calibration
        .step_quality
        .iter()
        .filter(|q| q.workflow == "tune-tiny" && q.step == "classify")
        .collect();
    assert_eq!(learned.len(), 1, "{learned:?}");
    assert_eq!(learned[0].n, 4, "three tuned examples and this run");
}

#[test]
fn tune_refuses_what_it_cannot_measure() {
    let dir = tempfile::tempdir().unwrap();
    let bare = &WORKFLOW[..WORKFLOW.find("examples:").unwrap()];
    std::fs::write(dir.path().join("bare.yaml"), bare).unwrap();
    let (code, _, err) = run_in(dir.path(), &["tune", "bare.yaml"]);
    assert_ne!(code, 0);
    assert!(err.contains("has no `examples:`"), "{err}");

    std::fs::write(dir.path().join("tiny.yaml"), WORKFLOW).unwrap();
    std::fs::write(
        dir.path().join("tickets.jsonl"),
        r#"{"id": "t1", "inputs": {"tickt": "x"}, "expected": "billing"}"#,
    )
    .unwrap();
    let (code, _, err) = run_in(dir.path(), &["tune", "tiny.yaml"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("tickets.jsonl:1") && err.contains("tickt"),
        "{err}"
    );

    std::fs::write(dir.path().join("tickets.jsonl"), EXAMPLES).unwrap();
    let (code, _, err) = run_in(dir.path(), &["tune", "tiny.yaml", "--models", "gpt-5"]);
    assert_ne!(code, 0);
    assert!(err.contains("`gpt-5` is not in the catalog"), "{err}");
    let (code, _, err) = run_in(dir.path(), &["tune", "tiny.yaml", "--slo", "10s"]);
    assert_ne!(code, 0);
    assert!(err.contains("drop --slo"), "{err}");
}
