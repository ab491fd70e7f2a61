//! `joule run`, `resume`, `replay` and `runs` end to end: the real binary, the real SmolLM2 on
//! the CPU, a real SQLite store, real tool processes, and `joule serve` on loopback.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{ensure_smol, joule, repo, run_in, server};
use serde_json::Value;

const TICKET: &str =
    "The app crashes every time I export my report. This bug started after the update.";

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The events of a JSONL trace.
fn trace(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(json)
        .collect()
}

fn of<'a>(events: &'a [Value], kind: &str) -> impl Iterator<Item = &'a Value> {
    events.iter().filter(move |e| e["event"] == kind)
}

#[test]
fn triage_runs_reports_lists_and_replays() {
    ensure_smol();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let tr = dir.path().join("trace.jsonl");
    let report = dir.path().join("report");
    let wf = repo().join("workflows/ticket-triage.yaml");
    let (code, out, err) = run_in(
        dir.path(),
        &[
            "run",
            wf.to_str().unwrap(),
            "--input",
            &format!("ticket={TICKET}"),
            "--model",
            "smollm2-135m",
            "--json",
            "--store",
            db.to_str().unwrap(),
            "--trace",
            tr.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let r = json(&out);
    assert_eq!(r["status"], "succeeded");
    let category = r["outputs"]["category"].as_str().unwrap();
    assert!(
        ["billing", "bug", "other"].contains(&category),
        "{category}"
    );
    assert!(!r["outputs"]["reply"].as_str().unwrap().trim().is_empty());
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4);
    for s in steps {
        for key in [
            "id",
            "model",
            "device",
            "latency_s",
            "energy_j",
            "energy_method",
            "cost_usd",
            "predicted_latency_s",
        ] {
            assert!(s.get(key).is_some(), "step lacks {key}: {s}");
        }
        if s["model"].is_string() {
            assert_eq!(s["model"], "smollm2-135m");
            assert!(
                ["rapl", "estimate"].contains(&s["energy_method"].as_str().unwrap()),
                "{s}"
            );
            assert!(s["energy_j"].as_f64().unwrap() > 0.0 && s["tokens_out"].as_u64().unwrap() > 0);
        }
    }
    let followup = steps.iter().find(|s| s["id"] == "followup").unwrap();
    assert_eq!(
        followup["status"],
        if category == "bug" {
            "succeeded"
        } else {
            "skipped"
        }
    );
    assert!(r["slo_met"].is_boolean() && r["totals"]["energy_j"].as_f64().unwrap() > 0.0);

    // The report files and the trace.
    let svg = std::fs::read_to_string(report.join("timeline.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("classify"));
    assert_eq!(
        json(&std::fs::read_to_string(report.join("report.json")).unwrap())["run_id"],
        r["run_id"]
    );
    let events = trace(&tr);
    assert_eq!(events.first().unwrap()["event"], "run_started");
    assert_eq!(events.last().unwrap()["event"], "run_ended");
    let llm_calls = of(&events, "attempt_started")
        .filter(|e| e["call"]["kind"] == "llm")
        .count();
    assert!(llm_calls >= 2);

    // The store lists and shows the run; a replay reproduces it without the model.
    let id = r["run_id"].as_str().unwrap();
    let (code, out, _) = run_in(
        dir.path(),
        &["runs", "list", "--store", db.to_str().unwrap(), "--json"],
    );
    assert_eq!(code, 0);
    assert_eq!(json(&out)[0]["id"], id);
    let (code, out, _) = run_in(
        dir.path(),
        &["runs", "show", id, "--store", db.to_str().unwrap()],
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("succeeded") && out.contains("classify"),
        "{out}"
    );
    let (code, out, _) = run_in(
        dir.path(),
        &[
            "runs",
            "show",
            id,
            "--store",
            db.to_str().unwrap(),
            "--events",
        ],
    );
    assert_eq!(code, 0);
    let stored: Vec<Value> = out.lines().map(json).collect();
    assert_eq!(
        stored.len(),
        events.len(),
        "the store holds every traced event"
    );
    let (code, out, err) = run_in(
        dir.path(),
        &["replay", id, "--store", db.to_str().unwrap(), "--json"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let replay = json(&out);
    assert_eq!(replay["reproduced"], true);
    assert_eq!(replay["outputs"], r["outputs"]);
    assert_eq!(
        replay["recorded_calls"].as_u64().unwrap() as usize,
        of(&events, "attempt_ended").count()
    );
}

#[test]
fn document_qa_fans_out_over_documents_and_fans_in() {
    ensure_smol();
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("inputs.json");
    std::fs::write(
        &inputs,
        serde_json::json!({
            "question": "When are invoices issued?",
            "documents": [
                "Invoices are issued on the first day of each month.",
                "Passwords can be reset from the sign-in page.",
                "Refunds go to the original card within five working days."
            ]
        })
        .to_string(),
    )
    .unwrap();
    let tr = dir.path().join("trace.jsonl");
    let wf = repo().join("workflows/document-qa.yaml");
    let (code, out, err) = run_in(
        dir.path(),
        &[
            "run",
            wf.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--model",
            "smollm2-135m",
            "--no-store",
            "--json",
            "--trace",
            tr.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let r = json(&out);
    assert_eq!(r["status"], "succeeded");
    assert!(!r["outputs"]["answer"].as_str().unwrap().trim().is_empty());
    let events = trace(&tr);
    let elements: BTreeSet<u64> = of(&events, "element_ended")
        .filter(|e| e["step"] == "facts")
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(elements, BTreeSet::from([0, 1, 2]), "one call per document");
    let answer_prompt = of(&events, "attempt_started")
        .find(|e| e["step"] == "answer")
        .map(|e| e["call"]["prompt"].as_str().unwrap().to_string())
        .unwrap();
    assert!(
        answer_prompt.contains("[1]") && answer_prompt.contains("[3]"),
        "fan-in: {answer_prompt}"
    );
}

const CHAIN: &str = r#"
name: chain
inputs:
  topic: { type: string }
budget: { latency: 10m }
steps:
  one:
    prompt: "Name one fact about {{ inputs.topic }}."
    max_tokens: 12
  two:
    prompt: "Rephrase: {{ steps.one.output }}"
    max_tokens: 12
  three:
    prompt: "Shorten: {{ steps.two.output }}"
    max_tokens: 12
  four:
    prompt: "Translate to French: {{ steps.three.output }}"
    max_tokens: 12
outputs:
  last: "{{ steps.four.output }}"
"#;

/// Starts `joule run` on the four-step chain in the background, with a store and a trace.
fn start_chain(dir: &Path, db: &Path, trace: &Path, stderr: Stdio) -> std::process::Child {
    let wf = dir.join("chain.yaml");
    std::fs::write(&wf, CHAIN).unwrap();
    joule()
        .args(["run", wf.to_str().unwrap(), "--input", "topic=the sea"])
        .args(["--model", "smollm2-135m", "--store", db.to_str().unwrap()])
        .args(["--trace", trace.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Waits until the run's trace (flushed whenever a step ends) shows `n` finished steps.
fn wait_for_steps(child: &mut std::process::Child, trace_file: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    // The file is being written: a last line may be half there, so only whole lines count.
    let ended = || {
        std::fs::read_to_string(trace_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["event"] == "step_ended")
            .count()
    };
    while ended() < n {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be interrupted"
        );
        assert!(Instant::now() < deadline, "the run made no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_run_killed_with_sigkill_resumes_without_redoing_finished_steps() {
    ensure_smol();
    let dir = tempfile::tempdir().unwrap();
    let (db, first) = (dir.path().join("runs.db"), dir.path().join("first.jsonl"));
    let mut child = start_chain(dir.path(), &db, &first, Stdio::null());
    // Kill it once two steps are done.
    wait_for_steps(&mut child, &first, 2);
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let before = trace(&first);
    let finished: BTreeSet<String> = of(&before, "step_ended")
        .map(|e| e["step"].as_str().unwrap().to_string())
        .collect();
    let id = before[0]["run_id"].as_str().unwrap().to_string();
    let (_, out, _) = run_in(
        dir.path(),
        &[
            "runs",
            "show",
            &id,
            "--store",
            db.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(
        json(&out)["status"],
        "running",
        "a killed run is left unfinished"
    );

    let second = dir.path().join("second.jsonl");
    let (code, out, err) = run_in(
        dir.path(),
        &[
            "resume",
            &id,
            "--store",
            db.to_str().unwrap(),
            "--trace",
            second.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let report = json(&out);
    assert_eq!(report["status"], "succeeded");
    assert_eq!(
        report["totals"]["predicted_latency_s"], before[0]["plan"]["totals"]["latency_s"],
        "the resumed run keeps the plan it started with"
    );
    for s in report["steps"].as_array().unwrap() {
        if finished.contains(s["id"].as_str().unwrap()) {
            assert_eq!(s["resumed"], true);
            assert!(
                s["energy_j"].as_f64().unwrap() > 0.0,
                "what it cost before the kill counts: {s}"
            );
        }
    }
    let after = trace(&second);
    let called: BTreeSet<String> = of(&after, "attempt_started")
        .map(|e| e["step"].as_str().unwrap().to_string())
        .collect();
    assert!(
        called.is_disjoint(&finished),
        "re-ran {:?}",
        called.intersection(&finished).collect::<Vec<_>>()
    );
    let all: BTreeSet<String> = ["one", "two", "three", "four"].map(String::from).into();
    assert_eq!(
        called.union(&finished).cloned().collect::<BTreeSet<_>>(),
        all
    );
    let model_calls = of(&after, "attempt_started").count();
    assert_eq!(
        model_calls,
        4 - finished.len(),
        "one model call per unfinished step"
    );
}

#[test]
fn the_openai_backend_against_joule_serve_answers_as_local_inference_does() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    let workflow = |device: &str| {
        format!(
            r#"
name: hello
policy: {{ providers: [local, lan-joule] }}
steps:
  greet:
    prompt: "Write one sentence about tea."
    max_tokens: 24
    device: {device}
outputs:
  text: "{{{{ steps.greet.output }}}}"
"#
        )
    };
    let mut outputs = Vec::new();
    for device in ["cpu", "lan-joule"] {
        let wf = dir.path().join(format!("{device}.yaml"));
        std::fs::write(&wf, workflow(device)).unwrap();
        let (code, out, err) = run_in(
            dir.path(),
            &[
                "run",
                wf.to_str().unwrap(),
                "--model",
                "smollm2-135m",
                "--no-store",
                "--json",
                "--endpoint",
                &format!("lan-joule={}/v1", srv.base),
            ],
        );
        assert_eq!(code, 0, "{device}: {out}\n{err}");
        let r = json(&out);
        assert_eq!(r["steps"][0]["device"], device);
        assert!(
            r["steps"][0]["tokens_out"].as_u64().unwrap() > 0,
            "{device}: usage is counted"
        );
        outputs.push(r["outputs"]["text"].clone());
    }
    assert_eq!(outputs[0], outputs[1]);
    assert!(!outputs[0].as_str().unwrap().is_empty());
}

#[test]
fn bad_inputs_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let wf = repo().join("workflows/ticket-triage.yaml");
    let (code, _, err) = run_in(dir.path(), &["run", wf.to_str().unwrap(), "--no-store"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("input `ticket` is required") && err.contains("--input ticket="),
        "{err}"
    );
    let (code, _, err) = run_in(
        dir.path(),
        &[
            "run",
            wf.to_str().unwrap(),
            "--no-store",
            "--input",
            "tickt=x",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("no input `tickt`") && err.contains("ticket"),
        "{err}"
    );
    let (code, _, err) = run_in(
        dir.path(),
        &[
            "resume",
            "nope",
            "--store",
            dir.path().join("r.db").to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("no run `nope`"), "{err}");
}

#[test]
fn ctrl_c_stops_the_run_cleanly_and_resume_finishes_it() {
    ensure_smol();
    let dir = tempfile::tempdir().unwrap();
    let (db, tr) = (dir.path().join("runs.db"), dir.path().join("trace.jsonl"));
    let mut child = start_chain(dir.path(), &db, &tr, Stdio::piped());
    wait_for_steps(&mut child, &tr, 1);
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("joule resume"),
        "it says how to finish: {stderr}"
    );
    let events = trace(&tr);
    let end = events.last().unwrap();
    assert_eq!(
        (end["event"].as_str(), end["status"].as_str()),
        (Some("run_ended"), Some("cancelled"))
    );
    let id = events[0]["run_id"].as_str().unwrap().to_string();
    let (_, shown, _) = run_in(
        dir.path(),
        &[
            "runs",
            "show",
            &id,
            "--store",
            db.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(json(&shown)["status"], "cancelled");
    let (code, out, err) = run_in(
        dir.path(),
        &["resume", &id, "--store", db.to_str().unwrap(), "--json"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let r = json(&out);
    assert_eq!(r["status"], "succeeded");
    assert_eq!(
        r["steps"][0]["resumed"], true,
        "the step finished before Ctrl-C is not run again"
    );
}

/// Two calls on one model, no budgets: the second runs warm, so it calibrates.
const TWICE: &str = r#"
name: twice
steps:
  first:
    prompt: "Write two sentences about the sea and the sky, for a child who likes boats."
    max_tokens: 24
  second:
    prompt: "Rewrite this for an adult reader, in two sentences: {{ steps.first.output }}"
    max_tokens: 24
outputs:
  text: "{{ steps.second.output }}"
"#;

#[test]
fn runs_calibrate_the_machine_profile_the_next_plan_reads() {
    ensure_smol();
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    let wf = dir.path().join("twice.yaml");
    std::fs::write(&wf, TWICE).unwrap();
    let joule_here = |args: &[&str]| {
        let out = joule()
            .args(args)
            .args(["--model", "smollm2-135m", "--json"])
            .env("JOULE_PROFILES_DIR", &profiles)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        json(&stdout)
    };
    let plan = || joule_here(&["plan", wf.to_str().unwrap()]);
    let before = plan();
    assert!(
        !before["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "calibration")
    );
    let run = joule_here(&["run", wf.to_str().unwrap(), "--no-store"]);
    assert_eq!(run["status"], "succeeded");
    let file = joule_planner::profile::Profiles::load(&profiles.join("calibration.yaml")).unwrap();
    let h = file
        .hardware
        .iter()
        .find(|h| h.model == "smollm2-135m" && h.device == "cpu")
        .unwrap();
    let prefill = h
        .prefill_tps
        .as_ref()
        .expect("the warm call's prefill speed was folded in");
    assert_eq!(prefill.source, joule_planner::figure::Source::Measured);
    assert_eq!(prefill.n, Some(1), "the first, cold call taught nothing");
    assert!(prefill.note.as_ref().unwrap().contains("calibrated"));
    // The next plan reads it, and predicts the second step with the calibrated speed.
    let after = plan();
    assert!(
        after["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "calibration"),
        "{after}"
    );
    assert_ne!(before["steps"][1]["end_s"], after["steps"][1]["end_s"]);

    // It also learned how many tokens each step really takes, and the plan uses those counts
    // instead of its guess from the prompt's text and `max_tokens`.
    for (i, step) in ["first", "second"].iter().enumerate() {
        let learned = file
            .steps
            .iter()
            .find(|t| t.workflow == "twice" && t.step == *step && t.model == "smollm2-135m")
            .unwrap_or_else(|| panic!("{step} was learned: {:?}", file.steps));
        let ran = &run["steps"][i];
        assert_eq!(ran["id"], *step);
        assert_eq!(learned.n, 1);
        assert_eq!(learned.tokens_in, ran["tokens_in"].as_f64().unwrap());
        assert_eq!(learned.tokens_out, ran["tokens_out"].as_f64().unwrap());
        let planned = &after["steps"][i];
        assert_eq!(planned["tokens_learned_from_calls"], 1, "{planned}");
        assert_eq!(planned["tokens_in"], ran["tokens_in"].as_f64().unwrap());
        assert_eq!(planned["tokens_out"], ran["tokens_out"].as_f64().unwrap());
        assert!(
            before["steps"][i]
                .get("tokens_learned_from_calls")
                .is_none()
        );
    }
}

/// Terminal control sequences in model, tool or template output (a clipboard write, a window
/// title, a clear screen) are shown escaped in `joule run`'s text, and kept exact in its JSON.
#[test]
fn control_sequences_in_outputs_are_shown_escaped_and_kept_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("hostile.yaml");
    std::fs::write(
        &wf,
        r#"name: hostile
policy: { tools: [python_tests] }
steps:
  say:
    value: "\e]52;c;cHduZWQ=\a\e[2J"
  tool:
    tool: python_tests
    args: { code: "print('\\x1b]0;pwned\\x07')", tests: "def test_ok(): pass" }
outputs:
  said: "{{ steps.say.output }}"
  tool: "{{ steps.tool.output }}"
"#,
    )
    .unwrap();
    let (code, out, err) = run_in(dir.path(), &["run", "hostile.yaml", "--no-store"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        !out.contains('\u{1b}') && !err.contains('\u{1b}'),
        "{out:?}"
    );
    assert!(out.contains("\\e]52;c;cHduZWQ=\\u{7}\\e[2J"), "{out}");
    assert!(out.contains("\\e]0;pwned"), "{out}");
    let (code, out, err) = run_in(dir.path(), &["run", "hostile.yaml", "--no-store", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let r = json(&out);
    assert_eq!(r["outputs"]["said"], "\u{1b}]52;c;cHduZWQ=\u{7}\u{1b}[2J");
    assert!(
        r["outputs"]["tool"]
            .as_str()
            .unwrap()
            .contains("\u{1b}]0;pwned\u{7}")
    );
}

/// On a CPU no measured profile describes, `joule run` measures the local models quickly
/// before planning, says so, and writes the speeds where the next plan finds them; the next
/// run measures nothing.
#[test]
fn a_first_run_on_an_unprofiled_cpu_measures_its_models_first() {
    ensure_smol();
    let (code, smol, err) = run_in(&repo(), &["models", "path", "smollm2-135m"]);
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().unwrap();
    // A home holding only SmolLM2, so only it is measured whatever else this cache holds.
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join("models")).unwrap();
    std::os::unix::fs::symlink(smol.trim(), home.join("models/smollm2-135m.gguf")).unwrap();
    let profiles = dir.path().join("profiles");
    let wf = dir.path().join("twice.yaml");
    std::fs::write(&wf, TWICE).unwrap();
    let run = || {
        let out = joule()
            .args(["run", wf.to_str().unwrap(), "--no-store", "--json"])
            .env("JOULE_HOME", &home)
            .env("JOULE_PROFILES_DIR", &profiles)
            .env("JOULE_FIRST_MEASURE", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert_eq!(json(&stdout)["status"], "succeeded");
        stderr
    };
    let first = run();
    assert!(
        first.contains("no measured speeds for smollm2-135m on this CPU"),
        "{first}"
    );
    assert!(first.contains("measured in "), "{first}");
    let machine = std::fs::read_dir(&profiles)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().is_some_and(|n| n != "calibration.yaml"))
        .expect("a machine profile was written");
    let file = joule_planner::profile::Profiles::load(&machine).unwrap();
    let h = file
        .hardware
        .iter()
        .find(|h| h.model == "smollm2-135m" && h.device == "cpu")
        .expect("smollm2 on the CPU was measured");
    for f in [&h.prefill_tps, &h.decode_tps, &h.load_s] {
        let f = f.as_ref().expect("prefill, decode and load are measured");
        assert_eq!(f.source, joule_planner::figure::Source::Measured);
        assert!(f.value > 0.0);
        assert!(
            f.note.as_ref().unwrap().contains("quick first-run"),
            "{f:?}"
        );
    }
    let second = run();
    assert!(!second.contains("no measured speeds"), "{second}");
}
