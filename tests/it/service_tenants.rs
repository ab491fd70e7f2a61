//! The run API's tenants, driven by `curl` and joule's own client against a real server on
//! loopback: keys name tenants and a tenant sees only its own, under its own policy; a full
//! queue answers 429 with `Retry-After`; one tenant's backlog does not hold back another's
//! run; cancel stops a running run at once and frees its slot; the event stream resumes from
//! `Last-Event-ID`; SIGTERM drains and the next start finishes what was left; concurrent runs
//! never spend past a tight daily budget.
//!
//! Runs are held in progress by a `gate` tool (a real sandboxed process that waits until the
//! test creates a file), so each test decides when a run ends without models or sleeps.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::service::{curl, wait_done};
use crate::support::{Server, joule, repo, server_with};

/// The shipped catalog and a `gate` tool.
fn gated_catalog(dir: &Path) -> std::path::PathBuf {
    let catalog = std::fs::read_to_string(repo().join("profiles/catalog.yaml")).unwrap();
    let gate = r#"
  - name: gate
    description: waits until a file named `name` is in the directory `path`
    program: python3
    argv:
      - "-I"
      - "-c"
      - "import os, sys, time\nwhile not os.path.exists(os.path.join(sys.argv[1], sys.argv[2])): time.sleep(0.01)\nprint('open')"
      - "{path}"
      - "{name}"
    args:
      path: { type: path }
      name: { type: string, max_bytes: 64 }
    limits: { cpu_s: 20, memory_mb: 128, timeout_s: 300 }

prices:"#;
    let path = dir.join("catalog.yaml");
    std::fs::write(&path, catalog.replacen("\nprices:", gate, 1)).unwrap();
    std::fs::create_dir_all(dir.join("gates")).unwrap();
    path
}

const GATED: &str = "name: gated\npolicy: { providers: [local], tools: [gate] }\ninputs:\n  gate: { type: string }\nsteps:\n  wait:\n    tool: gate\n    args: { path: gates, name: \"{{ inputs.gate }}\" }\n  after:\n    value: \"{{ steps.wait.output | trim }} {{ inputs.gate }}\"\noutputs:\n  opened: \"{{ steps.after.output }}\"\n";

const HELLO: &str = "name: hello\ninputs:\n  who: { type: string }\nsteps:\n  greet:\n    value: \"hello {{ inputs.who }}\"\noutputs:\n  greeting: \"{{ steps.greet.output }}\"\n";

fn open_gate(dir: &Path, name: &str) {
    std::fs::write(dir.join("gates").join(name), "").unwrap();
}

fn key(dir: &Path, tenant: &str) -> String {
    let out = joule()
        .args(["keys", "create", "--tenant", tenant, "--store"])
        .arg(dir.join("runs.db"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("jk_") && key.len() > 40, "{key}");
    key
}

fn start(dir: &Path, tenants: &str, extra: &[&str]) -> Server {
    std::fs::write(dir.join("tenants.yaml"), tenants).unwrap();
    let (store, catalog, workspace, tenants) = (
        dir.join("runs.db"),
        gated_catalog(dir),
        dir.to_path_buf(),
        dir.join("tenants.yaml"),
    );
    let mut args = vec![
        "--store",
        store.to_str().unwrap(),
        "--catalog",
        catalog.to_str().unwrap(),
        "--workspace",
        workspace.to_str().unwrap(),
        "--tenants",
        tenants.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    server_with(joule(), &args)
}

/// A request as tenant `key`.
fn call(
    server: &Server,
    key: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let auth = format!("Authorization: Bearer {key}");
    let body = body.map(Value::to_string);
    curl(
        method,
        &format!("{}{path}", server.base),
        body.as_deref(),
        &[&auth],
    )
}

fn submit(server: &Server, key: &str, yaml: &str, inputs: Value) -> String {
    let (code, r) = call(
        server,
        key,
        "POST",
        "/v1/runs",
        Some(&json!({"yaml": yaml, "inputs": inputs})),
    );
    assert_eq!(code, 202, "{r}");
    r["id"].as_str().unwrap().to_string()
}

fn status(server: &Server, key: &str, id: &str) -> String {
    let (code, r) = call(server, key, "GET", &format!("/v1/runs/{id}"), None);
    assert_eq!(code, 200, "{r}");
    r["status"].as_str().unwrap().to_string()
}

/// Polls until run `id` is in `want` (the API's own view, as a client would).
fn wait_status(server: &Server, key: &str, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(server, key, id);
        if s == want {
            return;
        }
        assert!(Instant::now() < deadline, "run {id} is {s}, never {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn keys_name_tenants_and_each_sees_only_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, outsider) = (
        key(dir.path(), "a"),
        key(dir.path(), "b"),
        key(dir.path(), "c"),
    );
    let server = start(dir.path(), "tenants:\n  a: {}\n  b: {}\n", &[]);

    let (code, r) = curl("GET", &format!("{}/v1/runs", server.base), None, &[]);
    assert_eq!(
        (code, r["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (code, _) = call(&server, "jk_forged", "GET", "/v1/runs", None);
    assert_eq!(code, 401);
    let (code, r) = call(&server, &outsider, "GET", "/v1/runs", None);
    assert_eq!(
        (code, r["error"]["code"].as_str()),
        (403, Some("tenant_not_configured"))
    );

    let auth_a = format!("Authorization: Bearer {a}");
    let (code, _) = curl(
        "PUT",
        &format!("{}/v1/workflows/hello", server.base),
        Some(HELLO),
        &[&auth_a],
    );
    assert_eq!(code, 201);
    let (code, _) = call(&server, &b, "GET", "/v1/workflows/hello", None);
    assert_eq!(code, 404, "b does not see a's workflow");
    let id = submit(&server, &a, HELLO, json!({"who": "a"}));
    let auth = [auth_a.as_str()];
    let run = wait_done(&server.base, &id, Duration::from_secs(60), &auth);
    assert_eq!(run["outputs"]["greeting"], "hello a", "{run}");
    for (method, path) in [
        ("GET", format!("/v1/runs/{id}")),
        ("POST", format!("/v1/runs/{id}/cancel")),
        ("GET", format!("/v1/runs/{id}/events")),
    ] {
        let (code, _) = call(&server, &b, method, &path, None);
        assert_eq!(code, 404, "{method} {path} as b");
    }
    let (_, page) = call(&server, &b, "GET", "/v1/runs", None);
    assert_eq!(page["runs"], json!([]));

    // joule's own client, with the key from JOULE_API_KEY.
    std::fs::write(dir.path().join("hello.yaml"), HELLO).unwrap();
    let out = joule()
        .args([
            "submit",
            "--server",
            &server.base,
            "--wait",
            "--input",
            "who=client",
        ])
        .arg(dir.path().join("hello.yaml"))
        .env("JOULE_API_KEY", &a)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("greeting: hello client"),
        "{text}"
    );
    let out = joule()
        .args(["runs", "list", "--json", "--server", &server.base])
        .env("JOULE_API_KEY", &a)
        .output()
        .unwrap();
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["runs"].as_array().unwrap().len(), 2, "{page}");
    let out = joule()
        .args(["runs", "list", "--server", &server.base])
        .output()
        .unwrap();
    assert!(!out.status.success(), "no key, no runs");
    assert!(String::from_utf8_lossy(&out.stderr).contains("JOULE_API_KEY"));

    let (code, doc) = curl(
        "GET",
        &format!("{}/v1/openapi.json", server.base),
        None,
        &[],
    );
    assert_eq!(code, 200);
    assert!(doc["paths"]["/v1/runs/{id}/events"].is_object());

    // Keys off only on loopback.
    let out = joule()
        .args(["serve", "--addr", "0.0.0.0:0", "--no-auth"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

#[test]
fn a_full_queue_is_429_backlogs_share_fairly_and_cancel_frees_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (key(dir.path(), "a"), key(dir.path(), "b"));
    let server = start(
        dir.path(),
        "tenants:\n  a: { queue: 3 }\n  b: {}\n",
        &["--max-runs", "1"],
    );
    let gated = |name: &str| submit(&server, &a, GATED, json!({"gate": name}));

    let first = gated("g1");
    wait_status(&server, &a, &first, "running");
    let backlog: Vec<String> = ["g2", "g3", "g4"].iter().map(|g| gated(g)).collect();
    // The fourth waiting run is one too many.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %header{retry-after}",
            "-X",
            "POST",
        ])
        .args(["-H", &format!("Authorization: Bearer {a}"), "--data-binary"])
        .arg(json!({"yaml": GATED, "inputs": {"gate": "g5"}}).to_string())
        .arg(format!("{}/v1/runs", server.base))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, retry) = answer.split_once(' ').unwrap();
    assert_eq!(code, "429", "{answer}");
    assert!(
        retry.trim().parse::<u64>().is_ok_and(|s| s >= 1),
        "Retry-After: {answer}"
    );

    // b's one run goes before a's backlog once the slot frees: a has had its turn.
    let single = submit(&server, &b, HELLO, json!({"who": "b"}));
    open_gate(dir.path(), "g1");
    let auth_b = format!("Authorization: Bearer {b}");
    let run = wait_done(&server.base, &single, Duration::from_secs(120), &[&auth_b]);
    assert_eq!(run["status"], "succeeded");
    assert_eq!(status(&server, &a, &backlog[2]), "queued");

    // Cancel a running run: it stops at its gate and the next takes the slot.
    wait_status(&server, &a, &backlog[0], "running");
    let (code, r) = call(
        &server,
        &a,
        "POST",
        &format!("/v1/runs/{}/cancel", backlog[0]),
        None,
    );
    assert!(
        code == 202 && ["cancelling", "cancelled"].contains(&r["status"].as_str().unwrap()),
        "{code} {r}"
    );
    wait_status(&server, &a, &backlog[0], "cancelled");
    wait_status(&server, &a, &backlog[1], "running");
    // Cancel a queued run: it never starts.
    let (code, r) = call(
        &server,
        &a,
        "POST",
        &format!("/v1/runs/{}/cancel", backlog[2]),
        None,
    );
    assert_eq!(
        (code, r["status"].as_str()),
        (200, Some("cancelled")),
        "{r}"
    );
    let (code, _) = call(
        &server,
        &a,
        "POST",
        &format!("/v1/runs/{}/cancel", backlog[2]),
        None,
    );
    assert_eq!(code, 409, "an ended run cannot be cancelled again");
    open_gate(dir.path(), "g3");
    let auth_a = format!("Authorization: Bearer {a}");
    let done = wait_done(
        &server.base,
        &backlog[1],
        Duration::from_secs(120),
        &[&auth_a],
    );
    assert_eq!(done["outputs"]["opened"], "open g3", "{done}");
    assert!(
        call(
            &server,
            &a,
            "GET",
            &format!("/v1/runs/{}", backlog[2]),
            None
        )
        .1["plan"]
            .is_null()
    );

    // The event stream, whole and then resumed after its second event.
    let events = |last: Option<&str>| -> Vec<(i64, String)> {
        let mut c = Command::new("curl");
        c.args(["-sS", "-N", "-H", &auth_a]);
        if let Some(l) = last {
            c.args(["-H", &format!("Last-Event-ID: {l}")]);
        }
        let out = c
            .arg(format!("{}/v1/runs/{}/events", server.base, backlog[1]))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut all = Vec::new();
        let mut id = None;
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().ok();
            } else if let Some(v) = line.strip_prefix("event: ") {
                all.push((id.take().expect("an id before each event"), v.to_string()));
            }
        }
        all
    };
    let whole = events(None);
    let kinds: Vec<&str> = whole.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"run_started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"run_ended"), "{kinds:?}");
    assert!(whole.windows(2).all(|w| w[0].0 < w[1].0), "ids grow");
    let rest = events(Some(&whole[1].0.to_string()));
    assert_eq!(rest, whole[2..].to_vec());
}

#[test]
fn a_tenants_own_policy_narrows_what_its_workflows_may_touch() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (key(dir.path(), "a"), key(dir.path(), "b"));
    std::fs::write(
        dir.path().join("a-policy.yaml"),
        "providers: [local]\ntools: [grep]\n",
    )
    .unwrap();
    let server = start(
        dir.path(),
        "tenants:\n  a: { policy: a-policy.yaml }\n  b: {}\n",
        &[],
    );
    let body = json!({"yaml": CALC, "inputs": {"n": 2}});
    let (code, r) = call(&server, &a, "POST", "/v1/runs", Some(&body));
    assert_eq!(
        (code, r["error"]["code"].as_str()),
        (422, Some("invalid_workflow")),
        "{r}"
    );
    let errors = r["error"]["errors"].to_string();
    assert!(
        errors.contains("forbidden by the operator policy") && errors.contains("\"line\""),
        "{errors}"
    );
    // The same workflow is b's to run: the server's policy allows it.
    let id = submit(&server, &b, CALC, json!({"n": 2}));
    let auth = format!("Authorization: Bearer {b}");
    let run = wait_done(&server.base, &id, Duration::from_secs(60), &[&auth]);
    assert_eq!(run["outputs"]["total"], "6", "{run}");
}

const CALC: &str = "name: sums\npolicy: { providers: [local], tools: [calc] }\ninputs:\n  n: { type: integer }\nsteps:\n  one:\n    tool: calc\n    args: { expression: \"{{ inputs.n }} + 1\" }\n  two:\n    tool: calc\n    args: { expression: \"{{ steps.one.output | trim }} * 2\" }\noutputs:\n  total: \"{{ steps.two.output | trim }}\"\n";

#[test]
fn sigterm_drains_and_the_next_start_finishes_what_was_left() {
    let dir = tempfile::tempdir().unwrap();
    let a = key(dir.path(), "a");
    let tenants = "tenants:\n  a: {}\n";
    let mut server = start(
        dir.path(),
        tenants,
        &["--max-runs", "1", "--drain-s", "0.2"],
    );
    let running = submit(&server, &a, GATED, json!({"gate": "t1"}));
    wait_status(&server, &a, &running, "running");
    let queued = submit(&server, &a, GATED, json!({"gate": "t2"}));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "a drained server exits cleanly: {exit:?}");

    open_gate(dir.path(), "t1");
    open_gate(dir.path(), "t2");
    let server = start(dir.path(), tenants, &["--max-runs", "1"]);
    let auth = format!("Authorization: Bearer {a}");
    for (id, gate) in [(&running, "t1"), (&queued, "t2")] {
        let run = wait_done(&server.base, id, Duration::from_secs(120), &[&auth]);
        assert_eq!(run["outputs"]["opened"], format!("open {gate}"), "{run}");
    }
}

#[test]
fn concurrent_runs_never_spend_past_a_tight_daily_budget() {
    let dir = tempfile::tempdir().unwrap();
    let a = key(dir.path(), "a");
    let calc = CALC;
    // What one run is predicted to spend, from the server's own plan of it.
    let probe = start(dir.path(), "tenants:\n  a: {}\n", &[]);
    let id = submit(&probe, &a, calc, json!({"n": 0}));
    let auth = format!("Authorization: Bearer {a}");
    let run = wait_done(&probe.base, &id, Duration::from_secs(60), &[&auth]);
    let predicted: f64 = run["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["energy_j"].as_f64().unwrap())
        .sum();
    assert!(predicted > 0.0, "{run}");
    drop(probe);

    // Room for about two and a half runs today (the probe's spend counts too), twelve at once.
    let spent_before = spent(dir.path());
    let budget = spent_before + 2.5 * predicted;
    let server = start(
        dir.path(),
        &format!("tenants:\n  a: {{ energy_per_day_j: {budget} }}\n"),
        &["--max-runs", "12"],
    );
    let ids: Vec<String> = (0..12)
        .map(|n| submit(&server, &a, calc, json!({"n": n})))
        .collect();
    let runs: Vec<Value> = ids
        .iter()
        .map(|id| wait_done(&server.base, id, Duration::from_secs(120), &[&auth]))
        .collect();
    let ok = runs.iter().filter(|r| r["status"] == "succeeded").count();
    let refused: Vec<&Value> = runs.iter().filter(|r| r["status"] == "failed").collect();
    assert!(
        ok >= 1 && !refused.is_empty(),
        "{ok} succeeded of {}",
        runs.len()
    );
    assert!(
        refused
            .iter()
            .all(|r| r["error"].to_string().contains("daily energy budget")),
        "{refused:?}"
    );
    let total = spent(dir.path());
    assert!(
        total <= budget + 1e-9,
        "spent {total} J of a {budget} J day"
    );
    // The ledger is what the runs measured.
    let measured: f64 = runs
        .iter()
        .filter_map(|r| r["report"]["totals"]["energy_j"].as_f64())
        .sum();
    assert!(
        (total - spent_before - measured).abs() < 1e-6,
        "{total} {spent_before} {measured}"
    );
}

/// What tenant `a` has spent today, as the server recorded it.
fn spent(dir: &Path) -> f64 {
    let db = rusqlite::Connection::open(dir.join("runs.db")).unwrap();
    db.query_row(
        "SELECT COALESCE(SUM(energy_j), 0) FROM tenant_spend WHERE tenant = 'a'",
        [],
        |r| r.get(0),
    )
    .unwrap()
}
