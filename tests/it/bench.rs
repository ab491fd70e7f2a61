//! `joule bench`: a simulated benchmark on a tiny suite writes the documented columns and joule
//! is never worse than the static baseline on the objective; a real one runs SmolLM2, records
//! replayable runs and keeps the simulated rows beside the real ones; bad suites are refused
//! with the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::support::{ensure_smol, run_in};
use joule_executor::runtime::RunStatus;
use joule_lab::bench::{COLUMNS, Mode, Row, Strategy as Policy, read_rows};
use joule_planner::figure::Meter;
use joule_planner::plan::Method;

const QA: &str = r#"name: tiny-qa
inputs:
  question: { type: string }
budget:
  latency: 2m
objective: energy
policy: { providers: [local] }
steps:
  answer:
    task: answer
    prompt: "Answer in a few words: {{ inputs.question }}"
    max_tokens: 24
    quality: 0.5
outputs:
  answer: "{{ steps.answer.output }}"
examples:
  file: qa.jsonl
  score: { answer: token_f1 }
"#;

// `quality: any`: the reply (a `write` step nothing measures) may run on the cheapest model,
// which is what gives joule room to save here.
const LABEL: &str = r#"name: tiny-label
quality: any
inputs:
  ticket: { type: string }
budget:
  latency: 2m
objective: energy
policy: { providers: [local] }
steps:
  classify:
    task: classify
    prompt: "Is this about billing or shipping? One word. {{ inputs.ticket }}"
    max_tokens: 4
    quality: 0.6
    output: [billing, shipping]
  reply:
    task: write
    prompt: "Write one polite sentence about {{ steps.classify.output }}."
    max_tokens: 40
outputs:
  category: "{{ steps.classify.output }}"
examples:
  file: label.jsonl
  score: { category: label }
"#;

const SUITE: &str = r#"name: tiny
workflows:
  - workflow: qa.yaml
    slo: { standard: 2m, tight: 50ms }
  - workflow: label.yaml
    slo: { standard: 2m, tight: 50ms }
"#;

fn suite(dir: &Path, qa: &str, label: &str) -> PathBuf {
    let s = dir.join("suite");
    std::fs::create_dir_all(&s).unwrap();
    std::fs::write(s.join("suite.yaml"), SUITE).unwrap();
    std::fs::write(s.join("qa.yaml"), qa).unwrap();
    std::fs::write(s.join("label.yaml"), label).unwrap();
    std::fs::write(
        s.join("qa.jsonl"),
        concat!(
            r#"{"id": "q1", "inputs": {"question": "What colour is the sky on a clear day?"}, "expected": ["blue"]}"#,
            "\n",
            r#"{"id": "q2", "inputs": {"question": "How many legs has a spider?"}, "expected": ["eight", "8"]}"#,
            "\n"
        ),
    )
    .unwrap();
    std::fs::write(
        s.join("label.jsonl"),
        concat!(
            r#"{"id": "t1", "inputs": {"ticket": "I was charged twice this month."}, "expected": "billing"}"#,
            "\n",
            r#"{"id": "t2", "inputs": {"ticket": "My parcel has not arrived yet."}, "expected": "shipping"}"#,
            "\n"
        ),
    )
    .unwrap();
    s
}

fn header(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect()
}

fn mean_energy(rows: &[Row], workflow: &str, tier: &str, policy: Policy) -> f64 {
    let of: Vec<&Row> = rows
        .iter()
        .filter(|r| r.workflow == workflow && r.tier == tier && r.policy == policy)
        .collect();
    assert!(!of.is_empty(), "no rows for {workflow} {tier} {policy:?}");
    of.iter().map(|r| r.energy_j).sum::<f64>() / of.len() as f64
}

#[test]
fn a_simulated_bench_writes_its_columns_and_joule_is_never_worse_than_static() {
    let dir = tempfile::tempdir().unwrap();
    let s = suite(dir.path(), QA, LABEL);
    let out = dir.path().join("out");
    // A GPU and the CPU, planned on the reference profile: the scenario where model size has
    // a price, so the policies can differ.
    let (code, stdout, stderr) = run_in(
        dir.path(),
        &[
            "bench",
            "--simulate",
            "--suite",
            s.to_str().unwrap(),
            "--requests",
            "7",
            "--slo-tier",
            "standard,tight",
            "--devices",
            "cpu,cuda:0",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(header(&out.join("results.csv")), COLUMNS);
    let rows = read_rows(&out.join("results.csv")).unwrap();
    // 2 workflows x 2 tiers x 3 policies x 7 requests.
    assert_eq!(rows.len(), 2 * 2 * 3 * 7);
    assert!(rows.iter().all(|r| r.mode == Mode::Simulated
        && r.energy_method == Some(Meter::Estimate)
        && r.run_id.is_empty()
        && (0.0..=1.0).contains(&r.quality)));
    // Requests cycle through the suite's two inputs.
    let inputs: Vec<&str> = rows
        .iter()
        .filter(|r| r.workflow == "tiny-qa" && r.tier == "standard" && r.policy == Policy::Joule)
        .map(|r| r.input.as_str())
        .collect();
    assert_eq!(inputs, ["q1", "q2", "q1", "q2", "q1", "q2", "q1"]);
    let mut strictly_better = 0;
    for wf in ["tiny-qa", "tiny-label"] {
        let joule = mean_energy(&rows, wf, "standard", Policy::Joule);
        let stat = mean_energy(&rows, wf, "standard", Policy::Static);
        assert!(
            joule <= stat * (1.0 + 1e-9),
            "{wf}: joule {joule} J > static {stat} J"
        );
        strictly_better += usize::from(joule < stat * 0.99);
        // No plan fits a 50 ms SLO: joule runs its fastest plan and the rows say the SLO was missed.
        let tight: Vec<&Row> = rows
            .iter()
            .filter(|r| r.workflow == wf && r.tier == "tight" && r.policy == Policy::Joule)
            .collect();
        assert!(
            tight
                .iter()
                .all(|r| r.plan == Method::BestEffort && !r.slo_met),
            "{tight:?}"
        );
    }
    assert!(
        strictly_better > 0,
        "joule saved nothing in a scenario built to let it"
    );
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("energy joule/static"), "{summary}");
    assert!(
        summary.contains("| suite | standard | joule |"),
        "{summary}"
    );
    for plot in ["energy", "latency-cdf", "energy-quality"] {
        let svg = std::fs::read_to_string(out.join(format!("{plot}-simulated.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("joule"), "{plot}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(json["suite"], "tiny");

    // Simulating again replaces the simulated rows rather than adding to them.
    let (code, _, stderr) = run_in(
        dir.path(),
        &[
            "bench",
            "--simulate",
            "--suite",
            s.to_str().unwrap(),
            "--requests",
            "2",
            "--policies",
            "joule",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(read_rows(&out.join("results.csv")).unwrap().len(), 2 * 2);
}

#[test]
fn a_real_bench_runs_the_model_records_replayable_runs_and_keeps_simulated_rows() {
    ensure_smol();
    let dir = tempfile::tempdir().unwrap();
    // SmolLM2 on every step, its quality floors set aside: the one model `make test` fetches.
    let pin = |text: &str| {
        text.replace(
            "    max_tokens:",
            "    model: smollm2-135m\n    max_tokens:",
        )
        .replace("    quality: 0.5\n", "")
        .replace("    quality: 0.6\n", "")
    };
    let s = suite(dir.path(), &pin(QA), &pin(LABEL));
    let out = dir.path().join("out");
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "--suite",
            s.to_str().unwrap(),
            "--requests",
            "1",
            "--policies",
            "static,joule",
            "--devices",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run_in(dir.path(), &args)
    };
    let (code, stdout, stderr) = bench(&["--simulate"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let (code, stdout, stderr) = bench(&[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stderr.contains("[   4/4]"), "a line per request: {stderr}");
    let rows = read_rows(&out.join("results.csv")).unwrap();
    let by_mode: BTreeMap<Mode, usize> = rows.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.mode).or_default() += 1;
        m
    });
    assert_eq!(
        by_mode,
        BTreeMap::from([(Mode::Real, 4), (Mode::Simulated, 4)])
    );
    let real: Vec<&Row> = rows.iter().filter(|r| r.mode == Mode::Real).collect();
    for r in &real {
        assert!(
            r.latency_s > 0.0 && r.energy_j > 0.0 && r.tokens_out > 0,
            "{r:?}"
        );
        assert!(
            matches!(r.energy_method, Some(Meter::Estimate | Meter::Rapl)),
            "{r:?}"
        );
        assert!((0.0..=1.0).contains(&r.quality));
        match r.status {
            RunStatus::Succeeded => {
                assert_eq!(r.models, "smollm2-135m");
                assert_eq!(r.slo_met, r.latency_s <= r.slo_s);
            }
            // SmolLM2 may name neither label; the request is kept as a failure, not lost.
            RunStatus::Failed => assert!(
                r.workflow == "tiny-label" && !r.error.is_empty() && r.quality == 0.0 && !r.slo_met,
                "{r:?}"
            ),
            other => panic!("status {other}: {r:?}"),
        }
    }
    assert!(
        real.iter()
            .filter(|r| r.workflow == "tiny-qa")
            .all(|r| r.status == RunStatus::Succeeded),
        "{real:?}"
    );
    // Each request is a stored run that `joule runs show` reads back.
    let (code, shown, stderr) = run_in(
        dir.path(),
        &[
            "runs",
            "show",
            &real[0].run_id,
            "--store",
            out.join("runs.db").to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(report["workflow"], real[0].workflow);
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        summary.contains("## real") && summary.contains("## simulated"),
        "{summary}"
    );
    assert!(out.join("latency-cdf-real.svg").exists());
}

#[test]
fn bad_suites_and_arguments_are_refused_with_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let s = suite(dir.path(), QA, LABEL);
    let sim = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "--simulate",
            "--suite",
            s.to_str().unwrap(),
            "--out",
        ];
        let out = dir.path().join("out");
        let out = out.to_str().unwrap().to_string();
        args.push(Box::leak(out.into_boxed_str()));
        args.extend_from_slice(extra);
        run_in(dir.path(), &args)
    };
    let (code, _, err) = sim(&["--slo-tier", "fast"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("tier `fast`") && err.contains("standard, tight"),
        "{err}"
    );
    let (code, _, err) = sim(&["--policies", "static,clever"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown policy `clever`"), "{err}");
    let (code, _, err) = sim(&["--slo", "10s"]);
    assert_ne!(code, 0);
    assert!(err.contains("--slo-tier"), "{err}");

    // A request line with an input the workflow does not declare: file and line.
    let qa = s.join("qa.jsonl");
    let good = std::fs::read_to_string(&qa).unwrap();
    std::fs::write(
        &qa,
        format!(
            "{good}{}\n",
            r#"{"id": "q3", "inputs": {"querstion": "x"}, "expected": ["y"]}"#
        ),
    )
    .unwrap();
    let (code, _, err) = sim(&[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("qa.jsonl:3") && err.contains("querstion"),
        "{err}"
    );
    std::fs::write(&qa, format!("{good}not json\n")).unwrap();
    let (code, _, err) = sim(&[]);
    assert!(code != 0 && err.contains("qa.jsonl:3: not JSON"), "{err}");
    std::fs::write(&qa, good).unwrap();

    // A scored output the workflow lacks, a workflow without examples, and a misspelt key
    // in the manifest.
    std::fs::write(
        s.join("qa.yaml"),
        QA.replace("{ answer: token_f1 }", "{ reply: token_f1 }"),
    )
    .unwrap();
    let (code, _, err) = sim(&[]);
    assert!(
        code != 0 && err.contains("scores `reply`, which is not an output"),
        "{err}"
    );
    let bare = &QA[..QA.find("examples:").unwrap()];
    std::fs::write(s.join("qa.yaml"), bare).unwrap();
    let (code, _, err) = sim(&[]);
    assert!(code != 0 && err.contains("has no `examples:`"), "{err}");
    std::fs::write(s.join("qa.yaml"), QA).unwrap();
    let manifest = s.join("suite.yaml");
    std::fs::write(
        &manifest,
        SUITE.replace(
            "slo: { standard: 2m, tight: 50ms }\n  - workflow: label",
            "sloo: { standard: 2m }\n  - workflow: label",
        ),
    )
    .unwrap();
    let (code, _, err) = sim(&[]);
    assert!(code != 0 && err.contains("suite.yaml:4"), "{err}");
}

#[test]
fn the_shipped_suite_loads_and_simulates_in_every_tier() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (code, stdout, stderr) = run_in(
        &crate::support::repo(),
        &[
            "bench",
            "--simulate",
            "--slo-tier",
            "tight,standard,relaxed",
            "--requests",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let rows = read_rows(&out.join("results.csv")).unwrap();
    assert_eq!(rows.len(), 3 * 3 * 3);
    for wf in [
        "bench-code-generation",
        "bench-document-qa",
        "bench-ticket-triage",
    ] {
        assert!(rows.iter().any(|r| r.workflow == wf), "{wf} missing");
    }
}
