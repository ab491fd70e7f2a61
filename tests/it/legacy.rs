//! A run store written by joule 0.1, before the workspace split (`tests/fixtures/store-0.1`,
//! its README says how it was made): its finished run still replays exactly, and its run that
//! was killed after two of four steps still resumes, without redoing them.

use serde_json::Value;

use crate::support::{ensure_smol, repo, run_in};

const DONE: &str = "20261201-214244-9391";
const KILLED: &str = "20261201-214247-6d03";

/// A copy of the fixture: resuming writes to the store, and the fixture stays as 0.1 wrote it.
fn store() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    std::fs::copy(repo().join("tests/fixtures/store-0.1/runs.db"), &db).unwrap();
    let db = db.to_str().unwrap().to_string();
    (dir, db)
}

#[test]
fn a_run_stored_by_joule_0_1_replays_exactly() {
    let (dir, db) = store();
    let (code, out, err) = run_in(dir.path(), &["replay", DONE, "--store", &db, "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["reproduced"], true, "{r}");
    assert_eq!(r["recorded_calls"], 4);
}

#[test]
fn a_run_killed_under_joule_0_1_resumes_without_redoing_finished_steps() {
    ensure_smol();
    let (dir, db) = store();
    let trace = dir.path().join("resumed.jsonl");
    let (code, out, err) = run_in(
        dir.path(),
        &[
            "resume",
            KILLED,
            "--store",
            &db,
            "--trace",
            trace.to_str().unwrap(),
            "--json",
            "--no-calibrate",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["status"], "succeeded");
    let resumed: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["resumed"] == true)
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(resumed, ["one", "two"]);
    let called: Vec<String> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "attempt_started")
        .map(|e| e["step"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(called, ["three", "four"], "only the unfinished steps ran");
    // The resumed run is now a finished one, and its whole record replays.
    let (code, out, err) = run_in(dir.path(), &["replay", KILLED, "--store", &db, "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["reproduced"],
        true
    );
}
