//! The agent step on a real model: `workflows/support-agent.yaml` run by the real binary on
//! Qwen2.5-Coder-0.5B, whose tool calls run as real sandboxed processes (grep over the help
//! docs, the catalog's `calc`). What a model chooses to call is its own affair, so the test
//! asks plainly for both tools and then checks what joule owes whatever the model did: every
//! call was one of the agent's tools, ran for real, is in the audit log with the sha256 of what
//! it returned, and the answer is prose rather than a call; the audit chain verifies and a
//! replay reproduces the run call by call without the model.

use std::path::Path;

use crate::support::{ensure_model, repo, run_in};
use serde_json::Value;
use sha2::{Digest, Sha256};

const QUESTION: &str = "Use grep to find refund in the docs, then use calc to compute 49 * 2.";

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn trace(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(json)
        .collect()
}

#[test]
fn an_agent_calls_real_tools_every_call_is_audited_and_the_run_replays() {
    ensure_model("qwen2.5-coder-0.5b");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let tr = dir.path().join("trace.jsonl");
    let wf = repo().join("workflows/support-agent.yaml");
    let (code, out, err) = run_in(
        dir.path(),
        &[
            "run",
            wf.to_str().unwrap(),
            "--input",
            &format!("question={QUESTION}"),
            "--model",
            "qwen2.5-coder-0.5b",
            "--json",
            "--store",
            db.to_str().unwrap(),
            "--trace",
            tr.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let r = json(&out);
    assert_eq!(r["status"], "succeeded", "{r}");
    let answer = r["outputs"]["answer"].as_str().unwrap();
    assert!(
        !answer.trim().is_empty() && !answer.contains("<tool_call>") && !answer.contains('{'),
        "the answer must be prose, not a call: {answer}"
    );

    let events = trace(&tr);
    let calls: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "agent_tool_call")
        .collect();
    assert!(!calls.is_empty(), "asked to, the model called no tool");
    for call in &calls {
        let tool = call["tool"].as_str().unwrap();
        assert!(["grep", "calc"].contains(&tool), "{call}");
        assert!(call["refused"].is_null(), "{call}");
        // The attempt that ran it, and its output, which the audit log's hash must cover.
        let attempt = call["attempt"]
            .as_u64()
            .expect("a call that ran has an attempt");
        let of = |kind: &str| {
            events
                .iter()
                .find(|e| {
                    e["event"] == kind
                        && e["step"] == "answer"
                        && e["attempt"].as_u64() == Some(attempt)
                })
                .unwrap_or_else(|| panic!("no {kind} of attempt {attempt} for {call}"))
        };
        assert_eq!(of("attempt_started")["call"]["kind"], "tool", "{call}");
        let ended = of("attempt_ended");
        if call["error"].is_null() {
            let text = ended["answer"]["text"].as_str().unwrap().trim_end();
            assert_eq!(
                call["result_sha256"].as_str().unwrap(),
                hex::encode(Sha256::digest(text.as_bytes())),
                "{call}"
            );
            let args = &call["arguments"];
            if tool == "grep" {
                // grep really ran over the docs: every line it printed holds the pattern.
                let pattern = args["pattern"].as_str().unwrap().to_lowercase();
                assert!(
                    text.lines().all(|l| l.to_lowercase().contains(&pattern)),
                    "{text}"
                );
            } else if args["expression"] == "49 * 2" {
                assert_eq!(text, "98");
            }
        }
    }
    // Each call was an attempt of the step: the model turns around them are attempts too.
    let started = events
        .iter()
        .filter(|e| e["event"] == "attempt_started" && e["step"] == "answer")
        .count();
    assert!(
        started > calls.len(),
        "{started} attempts for {} calls",
        calls.len()
    );

    let id = r["run_id"].as_str().unwrap();
    let store = db.to_str().unwrap();
    let (code, out, err) = run_in(dir.path(), &["audit", id, "--store", store, "--verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, _) = run_in(dir.path(), &["audit", id, "--store", store, "--json"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("agent_tool_call") && out.contains("result_sha256"),
        "{out}"
    );
    let (code, out, err) = run_in(dir.path(), &["replay", id, "--store", store, "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let replay = json(&out);
    assert_eq!(replay["reproduced"], true, "{replay}");
    assert_eq!(replay["outputs"], r["outputs"]);
    assert_eq!(replay["recorded_calls"].as_u64().unwrap() as usize, started);
}
