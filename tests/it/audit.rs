//! `joule audit`: a real run (a sandboxed tool and value steps, no model) is recorded with a
//! hash chain that verifies, and a changed or removed event row is detected.

use crate::support::run_in;

const WORKFLOW: &str = r#"
name: audited
policy: { providers: [local], tools: [grep] }
steps:
  search:
    tool: grep
    args: { pattern: "export", path: "docs" }
  count:
    value: "{{ steps.search.output | length }}"
outputs:
  n: "{{ steps.count.output }}"
"#;

#[test]
fn the_audit_chain_verifies_and_detects_a_modified_or_removed_event() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("docs")).unwrap();
    std::fs::write(dir.path().join("docs/a.md"), "How to export a report\n").unwrap();
    std::fs::write(dir.path().join("wf.yaml"), WORKFLOW).unwrap();
    let db = dir.path().join("runs.db");
    let db_s = db.to_str().unwrap();
    let (code, out, err) = run_in(dir.path(), &["run", "wf.yaml", "--store", db_s, "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let run = report["run_id"].as_str().unwrap().to_string();

    let audit = |args: &[&str]| {
        let mut all = vec!["audit", run.as_str(), "--store", db_s, "--json"];
        all.extend_from_slice(args);
        let (code, out, err) = run_in(dir.path(), &all);
        (
            code,
            serde_json::from_str::<serde_json::Value>(&out).unwrap(),
            err,
        )
    };
    let (code, log, _) = audit(&["--verify"]);
    assert_eq!(code, 0, "{log}");
    assert_eq!(log["verify"]["ok"], true);
    let events = log["events"].as_array().unwrap();
    assert!(events.len() >= 4, "{log}");
    // The tool call is there with its arguments and the sandbox layers it ran under.
    let ended = events
        .iter()
        .find(|e| e["kind"] == "attempt_ended" && e["detail"]["step"] == "search")
        .unwrap();
    let layers = ended["detail"]["sandbox"].as_array().unwrap();
    assert!(layers.iter().any(|l| l == "empty_env"), "{ended}");
    // ...the program and argv as started, and how it exited.
    assert_eq!(ended["detail"]["command"][0], "grep");
    assert!(
        ended["detail"]["command"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "export")
    );
    assert_eq!(ended["detail"]["exit_code"], 0);
    assert!(events.iter().any(|e| e["detail"]["tool"] == "grep"));
    // The policy the run was held to opens the log.
    assert_eq!(events[0]["kind"], "run_started");
    assert_eq!(
        events[0]["detail"]["policy"]["tools"],
        serde_json::json!(["grep"])
    );

    // Someone edits what the tool answered.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let changed = conn
        .execute(
            "UPDATE events SET body = replace(body, 'export', 'EXPORT') WHERE run_id = ?1 AND kind = 'attempt_ended'",
            [&run],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let (code, log, _) = audit(&["--verify"]);
    assert_eq!(code, 1);
    assert_eq!(log["verify"]["ok"], false);
    assert_eq!(
        log["verify"]["broken"]["Mismatch"]["kind"], "attempt_ended",
        "{log}"
    );
    let (code, _, err) = run_in(dir.path(), &["audit", &run, "--store", db_s, "--verify"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("audit chain broken") && err.contains("attempt_ended"),
        "{err}"
    );

    // Put it back, then cut the last event off: the run's head no longer matches.
    conn.execute(
        "UPDATE events SET body = replace(body, 'EXPORT', 'export') WHERE run_id = ?1 AND kind = 'attempt_ended'",
        [&run],
    )
    .unwrap();
    assert_eq!(audit(&["--verify"]).0, 0);
    conn.execute(
        "DELETE FROM events WHERE id = (SELECT max(id) FROM events WHERE run_id = ?1)",
        [&run],
    )
    .unwrap();
    let (code, log, _) = audit(&["--verify"]);
    assert_eq!(code, 1);
    assert!(log["verify"]["broken"].get("Head").is_some(), "{log}");
}
