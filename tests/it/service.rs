//! The run API of `joule serve`, driven by the plain `curl` command line against the real
//! server on loopback: workflows registered and versioned, a bad one refused with its
//! line:column errors, runs submitted (idempotently) and read back, and every accepted run
//! completed, none lost or doubled, after the server is killed with SIGKILL and started again.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{ensure_smol, joule, server_with};
use serde_json::{Value, json};

/// `curl` with a method, a body and headers; the status and the JSON answer.
pub(crate) fn curl(method: &str, url: &str, body: Option<&str>, headers: &[&str]) -> (u16, Value) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-X", method, "-w", "\n%{http_code}", url]);
    if let Some(b) = body {
        c.args(["--data-binary", b]);
    }
    for h in headers {
        c.args(["-H", h]);
    }
    let out = c.output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn service(dir: &Path) -> crate::support::Server {
    let store = dir.join("runs.db");
    server_with(
        joule(),
        &[
            "--store",
            store.to_str().unwrap(),
            "--workspace",
            dir.to_str().unwrap(),
            "--max-runs",
            "1",
            "--no-auth",
        ],
    )
}

/// Polls a run until it ends (the API's own way of being followed until events stream).
pub(crate) fn wait_done(base: &str, id: &str, within: Duration, headers: &[&str]) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (code, run) = curl("GET", &format!("{base}/v1/runs/{id}"), None, headers);
        assert_eq!(code, 200, "{run}");
        if ["succeeded", "failed", "cancelled"].contains(&run["status"].as_str().unwrap_or("")) {
            return run;
        }
        assert!(Instant::now() < deadline, "run {id} did not end: {run}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const HELLO: &str = "name: hello\ninputs:\n  who: { type: string }\nsteps:\n  greet:\n    value: \"hello {{ inputs.who }}\"\noutputs:\n  greeting: \"{{ steps.greet.output }}\"\n";

#[test]
fn workflows_are_versioned_bad_ones_refused_and_runs_submitted_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = service(dir.path());
    let base = &server.base;
    let wf = format!("{base}/v1/workflows/hello");

    let (code, v1) = curl("PUT", &wf, Some(HELLO), &[]);
    assert_eq!(code, 201, "{v1}");
    let (code, again) = curl("PUT", &wf, Some(HELLO), &[]);
    assert_eq!(
        (code, &again["version"]),
        (200, &v1["version"]),
        "same text, same version"
    );
    let (code, got) = curl("GET", &wf, None, &[]);
    assert_eq!((code, got["yaml"].as_str()), (200, Some(HELLO)));

    // The compiler's errors, with their places.
    let bad = "name: hello\nsteps:\n  greet:\n    promt: hi\n";
    let (code, refused) = curl("PUT", &wf, Some(bad), &[]);
    assert_eq!(code, 422, "{refused}");
    let e = &refused["error"]["errors"][0];
    assert_eq!(
        (e["line"].as_u64(), e["column"].as_u64()),
        (Some(4), Some(5)),
        "{e}"
    );
    assert!(e["help"].as_str().unwrap().contains("prompt"), "{e}");
    let (code, _) = curl(
        "PUT",
        &format!("{base}/v1/workflows/other"),
        Some(HELLO),
        &[],
    );
    assert_eq!(
        code, 422,
        "the name in the file must be the name registered"
    );

    // A submission, retried with its key: one run.
    let runs = format!("{base}/v1/runs");
    let body = json!({"workflow": "hello", "inputs": {"who": "data team"}}).to_string();
    let (code, first) = curl("POST", &runs, Some(&body), &["Idempotency-Key: try-1"]);
    assert_eq!(code, 202, "{first}");
    let (code, retry) = curl("POST", &runs, Some(&body), &["Idempotency-Key: try-1"]);
    assert_eq!((code, &retry["id"]), (202, &first["id"]));
    let id = first["id"].as_str().unwrap();
    let run = wait_done(base, id, Duration::from_secs(60), &[]);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["outputs"]["greeting"], "hello data team");
    assert_eq!(
        run["version"], v1["version"],
        "the run pins the version it started with"
    );
    let (code, late) = curl("POST", &runs, Some(&body), &["Idempotency-Key: try-1"]);
    assert_eq!(
        (code, &late["id"], late["status"].as_str()),
        (202, &first["id"], Some("succeeded")),
        "a retry after the run ended says so"
    );

    // Refused before anything is queued.
    for (body, status, code) in [
        (json!({"workflow": "hello"}), 422, "invalid_inputs"),
        (json!({"workflow": "nope"}), 404, "workflow_not_found"),
        (
            json!({"workflow": "hello", "yaml": HELLO}),
            400,
            "invalid_request",
        ),
        (json!({"yaml": HELLO, "extra": 1}), 400, "invalid_json"),
    ] {
        let (got, answer) = curl("POST", &runs, Some(&body.to_string()), &[]);
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
    }
    let (code, _) = curl("GET", &format!("{runs}/no-such-run"), None, &[]);
    assert_eq!(code, 404);
}

#[test]
fn accepted_runs_survive_a_kill_and_each_runs_once() {
    ensure_smol();
    let dir = tempfile::tempdir().unwrap();
    let yaml = "name: ask\ninputs:\n  q: { type: string }\nsteps:\n  answer:\n    prompt: \"{{ inputs.q }}\"\n    max_tokens: 24\n    model: smollm2-135m\noutputs:\n  answer: \"{{ steps.answer.output }}\"\n";
    let mut server = service(dir.path());
    let (code, _) = curl(
        "PUT",
        &format!("{}/v1/workflows/ask", server.base),
        Some(yaml),
        &[],
    );
    assert_eq!(code, 201);
    let ids: Vec<String> = (0..3)
        .map(|i| {
            let body = json!({"workflow": "ask", "inputs": {"q": format!("Name a colour, {i}.")}});
            let (code, r) = curl(
                "POST",
                &format!("{}/v1/runs", server.base),
                Some(&body.to_string()),
                &[],
            );
            assert_eq!(code, 202, "{r}");
            r["id"].as_str().unwrap().to_string()
        })
        .collect();
    // Killed with the runs accepted (one at a time: the first is running or about to).
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let server = service(dir.path());
    for id in &ids {
        let run = wait_done(&server.base, id, Duration::from_secs(600), &[]);
        assert_eq!(run["status"], "succeeded", "{run}");
        assert!(!run["outputs"]["answer"].as_str().unwrap().is_empty());
    }
    // None doubled: the store holds exactly these runs.
    let db = rusqlite::Connection::open(dir.path().join("runs.db")).unwrap();
    let stored: Vec<String> = db
        .prepare("SELECT id FROM runs ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(stored, expected);
}
