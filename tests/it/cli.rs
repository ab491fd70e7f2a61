//! The `joule` binary end to end: validate, graph and schema on the shipped examples.

use crate::support::{examples, repo, run_in};

#[test]
fn there_are_at_least_six_examples() {
    assert!(examples().len() >= 6, "{:?}", examples());
}

#[test]
fn every_example_validates() {
    for path in examples() {
        let (code, out, err) = run_in(&repo(), &["validate", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {err}", path.display());
        assert!(out.starts_with("ok "), "{out}");
    }
}

#[test]
fn validate_json_describes_the_dag() {
    let (code, out, _) = run_in(
        &repo(),
        &["validate", "--json", "workflows/ticket-triage.yaml"],
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["valid"], true);
    assert_eq!(v["name"], "ticket-triage");
    let order: Vec<&str> = v["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(order, ["classify", "search", "draft", "followup"]);
    assert_eq!(v["critical_path"]["length"], 3);
    assert_eq!(v["max_width"], 2);
    let edges: Vec<(String, String, String)> = v["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().into(),
                e["to"].as_str().unwrap().into(),
                e["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        edges.contains(&("classify".into(), "followup".into(), "condition".into())),
        "{edges:?}"
    );
    assert!(
        edges.contains(&("search".into(), "draft".into(), "data".into())),
        "{edges:?}"
    );
}

#[test]
fn validate_many_files_gives_one_json_line_each_and_fails_if_any_fails() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "name: x\nsteps:\n  a: { value: \"{{ steps.b.output }}\" }\n",
    )
    .unwrap();
    let good = repo().join("workflows/document-qa.yaml");
    let (code, out, _) = run_in(
        dir.path(),
        &["validate", "--json", good.to_str().unwrap(), "bad.yaml"],
    );
    assert_eq!(code, 1);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["valid"], true);
    assert_eq!(lines[1]["valid"], false);
    assert_eq!(lines[1]["errors"][0]["line"], 3);
    assert_eq!(lines[1]["errors"][0]["code"], "unknown-reference");
}

#[test]
fn missing_file_is_a_clear_error() {
    let (code, _, err) = run_in(&repo(), &["validate", "no/such/file.yaml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no/such/file.yaml:1:1: cannot read the file"),
        "{err}"
    );
}

#[test]
fn graph_draws_every_step_and_edge() {
    let (code, dot, _) = run_in(&repo(), &["graph", "workflows/ticket-triage.yaml"]);
    assert_eq!(code, 0);
    assert!(dot.starts_with("digraph \"ticket-triage\""), "{dot}");
    assert_eq!(dot.matches(" -> ").count(), 4, "{dot}");
    assert!(
        dot.contains("s0 -> s3 [style=dashed, label=\"when\"]"),
        "{dot}"
    );

    let (code, mermaid, _) = run_in(
        &repo(),
        &[
            "graph",
            "--format",
            "mermaid",
            "workflows/ticket-triage.yaml",
        ],
    );
    assert_eq!(code, 0);
    assert!(mermaid.starts_with("flowchart TD"));
    assert!(mermaid.contains("s0 -. when .-> s3"), "{mermaid}");
    assert!(
        mermaid.contains("followup<br/>(value, when, for each)"),
        "{mermaid}"
    );
}

#[test]
fn checked_in_schema_is_current() {
    let (code, schema, _) = run_in(&repo(), &["schema"]);
    assert_eq!(code, 0);
    let checked_in = std::fs::read_to_string(repo().join("workflows/schema.json")).unwrap();
    assert!(
        schema == checked_in,
        "workflows/schema.json is stale: run `cargo run -- schema > workflows/schema.json`"
    );
    let v: serde_json::Value = serde_json::from_str(&schema).unwrap();
    assert_eq!(
        v["additionalProperties"], false,
        "unknown top-level keys must be rejected"
    );
    assert!(
        v["required"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "steps")
    );
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, err) = run_in(&repo(), &["validate"]);
    assert_eq!(code, 2);
    assert!(err.contains("FILES"), "{err}");
}

#[test]
fn validate_reports_what_the_operator_policy_forbids_at_its_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("w.yaml"),
        "name: w\npolicy: { providers: [local, openai], tools: [grep] }\nsteps:\n  a:\n    prompt: hi\n    device: openai\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("operator.yaml"), "providers: [local]\n").unwrap();
    let (code, _, err) = run_in(
        dir.path(),
        &["validate", "w.yaml", "--policy", "operator.yaml"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("endpoint `openai` is forbidden by the operator policy"),
        "{err}"
    );
    assert!(err.contains("w.yaml:6:"), "{err}");
    // Without it the workflow is valid; `$JOULE_POLICY` names the same file.
    assert_eq!(run_in(dir.path(), &["validate", "w.yaml"]).0, 0);
    let out = crate::support::joule()
        .args(["validate", "w.yaml"])
        .current_dir(dir.path())
        .env("JOULE_POLICY", dir.path().join("operator.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // An unusable policy file stops everything.
    std::fs::write(dir.path().join("bad.yaml"), "sandbox: [moat]\n").unwrap();
    let (code, _, err) = run_in(dir.path(), &["validate", "w.yaml", "--policy", "bad.yaml"]);
    assert_eq!(code, 1);
    assert!(err.contains("`moat` is not a sandbox layer"), "{err}");
}
