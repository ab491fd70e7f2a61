//! `joule eval` end to end on SmolLM2: scores land in the profile as measured quality with
//! their eval and sample size, next to what the profile already held; bad input is refused.

use crate::support::{ensure_smol, run_in};
use joule_planner::figure::Source;
use joule_planner::profile::Profiles;
use joule_planner::spec::Task;

#[test]
fn eval_writes_measured_quality_into_the_profile() {
    ensure_smol();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("machine.yaml");
    std::fs::write(
        &out,
        "name: mine\nquality:\n  - { model: qwen2.5-coder-0.5b, task: answer, value: 0.4, source: measured, n: 60, eval: joule-answer-v1 }\n",
    )
    .unwrap();
    let details = dir.path().join("items/answers.jsonl");
    let (code, stdout, stderr) = run_in(
        dir.path(),
        &[
            "eval",
            "--task",
            "answer",
            "--models",
            "smollm2-135m",
            "--limit",
            "2",
            "--out",
            out.to_str().unwrap(),
            "--details",
            details.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let result = &report["results"][0];
    assert_eq!(
        (result["n"].as_u64(), result["of"].as_u64()),
        (Some(2), Some(60))
    );
    let score = result["score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&score));

    // Every item's answer is kept, and the mean of their scores is the reported score.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&details)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let mean = lines
        .iter()
        .map(|l| l["result"]["score"].as_f64().unwrap())
        .sum::<f64>()
        / 2.0;
    assert!((mean - score).abs() < 1e-9);
    assert!(
        lines
            .iter()
            .all(|l| l["result"]["tokens_out"].as_u64() > Some(0))
    );

    let file = Profiles::load(&out).unwrap();
    assert_eq!(file.name, "mine");
    let mut profiles = Profiles::default();
    profiles.merge(file);
    let q = profiles.quality("smollm2-135m", Task::Answer).unwrap();
    assert_eq!(
        (q.source, q.n, q.eval.as_deref()),
        (Source::Measured, Some(2), Some("joule-answer-v1"))
    );
    assert!((q.value - score).abs() < 0.001);
    assert!(q.note.as_ref().unwrap().contains("first 2 of 60 items"));
    assert_eq!(
        profiles
            .quality("qwen2.5-coder-0.5b", Task::Answer)
            .unwrap()
            .value,
        0.4,
        "what the profile held is kept"
    );
}

#[test]
fn eval_refuses_bad_input_with_a_clear_error() {
    ensure_smol();
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run_in(
        dir.path(),
        &["eval", "--task", "poetry", "--models", "smollm2-135m"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("no eval for task `poetry`"), "{err}");

    let (code, _, err) = run_in(
        dir.path(),
        &["eval", "--task", "answer", "--models", "no-such-model"],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("`no-such-model` is not in the catalog"),
        "{err}"
    );

    let data = dir.path().join("mine.jsonl");
    std::fs::write(
        &data,
        "{\"id\": \"a\", \"context\": \"c\", \"question\": \"q\", \"answers\": [\"x\"]}\n{\"id\": \"b\", \"text\": \"t\", \"reference\": \"r\"}\n",
    )
    .unwrap();
    let (code, _, err) = run_in(
        dir.path(),
        &[
            "eval",
            "--task",
            "answer",
            "--models",
            "smollm2-135m",
            "--data",
            data.to_str().unwrap(),
            "--out",
            dir.path().join("p.yaml").to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("mine.jsonl:2") && err.contains("summarize item"),
        "{err}"
    );
    assert!(!dir.path().join("p.yaml").exists(), "nothing was scored");
}

#[test]
fn an_endpoint_is_evaluated_like_a_local_model() {
    let server = crate::support::server();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.yaml");
    let url = format!("lan-joule={}/v1", server.base);
    let args = |device: &str| {
        vec![
            "eval".to_string(),
            "--task".into(),
            "classify".into(),
            "--models".into(),
            "smollm2-135m".into(),
            "--device".into(),
            device.into(),
            "--endpoint".into(),
            url.clone(),
            "--limit".into(),
            "2".into(),
            "--out".into(),
            out.to_str().unwrap().into(),
            "--details".into(),
            dir.path()
                .join(format!("{device}.jsonl"))
                .to_str()
                .unwrap()
                .into(),
            "--json".into(),
        ]
    };
    let mut outputs = Vec::new();
    for device in ["lan-joule", "cpu"] {
        let a = args(device);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = run_in(dir.path(), &a);
        assert_eq!(code, 0, "{device}: {stdout}\n{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["results"][0]["device"], device);
        let answers: Vec<String> =
            std::fs::read_to_string(dir.path().join(format!("{device}.jsonl")))
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["result"]["output"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
        outputs.push(answers);
    }
    // Greedy decoding of the same model: the served answers are the local ones.
    assert_eq!(outputs[0], outputs[1]);
}
