//! `joule plan` end to end: every example gets a feasible, checked plan; a tighter SLO moves
//! steps to faster configs; an impossible SLO is explained; the policy keeps steps off
//! endpoints it does not list; baselines and the Pareto sweep work.

use crate::support::{examples, repo, run_in};
use serde_json::Value;

fn plan_json(args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["plan", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = run_in(&repo(), &all);
    let v = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (code, v, err)
}

fn on_device(plan: &Value, device: &str) -> usize {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["device"] == device)
        .count()
}

#[test]
fn every_example_gets_a_feasible_checked_plan() {
    for path in examples() {
        let file = path.to_str().unwrap();
        let (code, plan, err) = plan_json(&[file]);
        assert_eq!(code, 0, "{file}: {err}");
        assert_eq!(plan["feasible"], true, "{file}");
        assert_eq!(plan["solver"]["name"], "highs");
        assert_eq!(plan["solver"]["status"], "optimal", "{file}");
        assert!(plan["violations"].as_array().unwrap().is_empty());
        let latency = plan["totals"]["latency_s"].as_f64().unwrap();
        if let Some(slo) = plan["budget"]["latency_s"].as_f64() {
            assert!(latency <= slo + 1e-6, "{file}: {latency} > {slo}");
        }
        for s in plan["steps"].as_array().unwrap() {
            for key in [
                "id", "model", "device", "start_s", "end_s", "energy_j", "cost_usd",
            ] {
                assert!(s.get(key).is_some(), "{file}: step lacks {key}");
            }
            assert!(s["end_s"].as_f64().unwrap() >= s["start_s"].as_f64().unwrap());
            assert!(s["end_s"].as_f64().unwrap() <= latency + 1e-9);
        }
    }
}

#[test]
fn tighter_slo_moves_steps_to_faster_configs() {
    // Cost objective with a CPU (cheap, slow) and a GPU (fast, dear): a loose SLO keeps the
    // llm steps on the CPU, a tight one moves them to the GPU.
    let base = ["workflows/research-report.yaml", "--devices", "cpu,cuda:0"];
    let mut loose: Vec<&str> = base.to_vec();
    loose.extend(["--slo", "15m"]);
    let mut tight: Vec<&str> = base.to_vec();
    tight.extend(["--slo", "1m"]);
    let (c1, p1, e1) = plan_json(&loose);
    let (c2, p2, e2) = plan_json(&tight);
    assert_eq!((c1, c2), (0, 0), "{e1}{e2}");
    assert!(
        on_device(&p2, "cuda:0") > on_device(&p1, "cuda:0"),
        "{p1}\n{p2}"
    );
    let lat = |p: &Value| p["totals"]["latency_s"].as_f64().unwrap();
    let cost = |p: &Value| p["totals"]["cost_usd"].as_f64().unwrap();
    assert!(lat(&p2) < lat(&p1) && lat(&p2) <= 60.0);
    assert!(cost(&p2) > cost(&p1), "speed must cost something here");
    // A budget is reported as binding exactly when the plan is at (within 1% of) it.
    let binds = |p: &Value| {
        p["binding"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b == "latency")
    };
    assert_eq!(binds(&p2), lat(&p2) >= 0.99 * 60.0);
    assert!(!binds(&p1));
}

#[test]
fn impossible_slo_is_explained() {
    let (code, out, err) = run_in(
        &repo(),
        &["plan", "workflows/ticket-triage.yaml", "--slo", "1s"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("no plan meets the budgets of `ticket-triage`"),
        "{err}"
    );
    assert!(err.contains("below the fastest possible run"), "{err}");
    assert!(err.contains("try --slo"), "{err}");

    let (code, v, _) = plan_json(&["workflows/ticket-triage.yaml", "--slo", "1s"]);
    assert_eq!(code, 1);
    assert_eq!(v["feasible"], false);
    let min_slo = v["min_slo_s"].as_f64().unwrap();
    // The suggested SLO really is feasible, and a little less is not.
    let ok = format!("{:.3}s", min_slo * 1.001);
    let (code, _, err) = plan_json(&["workflows/ticket-triage.yaml", "--slo", &ok]);
    assert_eq!(code, 0, "{err}");
    let not = format!("{:.3}s", min_slo * 0.99);
    let (code, _, _) = plan_json(&["workflows/ticket-triage.yaml", "--slo", &not]);
    assert_eq!(code, 1);
}

#[test]
fn local_only_policy_never_plans_onto_an_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("workflows/research-report.yaml")).unwrap();
    let local = dir.path().join("local.yaml");
    std::fs::write(&local, &text).unwrap();
    let open = dir.path().join("open.yaml");
    std::fs::write(
        &open,
        text.replace(
            "objective: cost\n",
            "objective: cost\npolicy:\n  providers: [local, openai]\n",
        ),
    )
    .unwrap();
    let (code, p_open, err) = plan_json(&[open.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        on_device(&p_open, "openai") > 0,
        "the endpoint is cheaper here: {p_open}"
    );
    let (code, p_local, err) = plan_json(&[local.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(on_device(&p_local, "openai"), 0, "{p_local}");
}

#[test]
fn baselines_are_never_better_than_the_milp() {
    for path in examples() {
        let file = path.to_str().unwrap();
        let (_, milp, _) = plan_json(&[file]);
        let objective = milp["objective"].as_str().unwrap().to_string();
        let key = match objective.as_str() {
            "energy" => "energy_j",
            "cost" => "cost_usd",
            _ => "latency_s",
        };
        for baseline in ["static", "greedy"] {
            let (_, b, _) = plan_json(&[file, "--baseline", baseline]);
            assert_eq!(b["method"], baseline);
            if b["feasible"] == true {
                let (mv, bv) = (
                    milp["totals"][key].as_f64().unwrap(),
                    b["totals"][key].as_f64().unwrap(),
                );
                assert!(
                    bv >= mv * (1.0 - 1e-6),
                    "{file}: {baseline} {bv} < milp {mv}"
                );
            }
        }
    }
}

#[test]
fn pareto_writes_csv_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pareto");
    let (code, stdout, err) = run_in(
        &repo(),
        &[
            "plan",
            "workflows/research-report.yaml",
            "--devices",
            "cpu,cuda:0",
            "--pareto",
            "--points",
            "5",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("pareto.svg"));
    let csv = std::fs::read_to_string(out.join("pareto.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "slo_s,feasible,latency_s,energy_j,cost_usd");
    assert_eq!(rows.len(), 6);
    // Cost (the objective) never rises as the SLO loosens.
    let costs: Vec<f64> = rows[1..]
        .iter()
        .map(|r| r.split(',').nth(4).unwrap().parse().unwrap())
        .collect();
    assert!(
        costs.windows(2).all(|w| w[1] <= w[0] * (1.0 + 1e-6)),
        "{costs:?}"
    );
    let svg = std::fs::read_to_string(out.join("pareto.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("predicted latency"));
}

#[test]
fn pin_to_a_model_the_catalog_lacks_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pin.yaml"),
        "name: t\nsteps:\n  a:\n    prompt: hi\n    model: qwen2.5-coder-1.5\n",
    )
    .unwrap();
    let (code, _, err) = run_in(dir.path(), &["plan", "pin.yaml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("pin.yaml:5:12: model `qwen2.5-coder-1.5` is not in the catalog"),
        "{err}"
    );
    assert!(err.contains("did you mean `qwen2.5-coder-1.5b`?"), "{err}");
}

#[test]
fn unreachable_quality_floor_names_the_step_and_why() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("q.yaml"),
        "name: t\nsteps:\n  a:\n    task: code\n    prompt: hi\n    quality: 0.95\n",
    )
    .unwrap();
    let (code, _, err) = run_in(dir.path(), &["plan", "q.yaml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("step `a` has no model and device it may run on"),
        "{err}"
    );
    assert!(
        err.contains("qwen2.5-coder-1.5b on cpu: quality 0.71 for code is below the floor 0.95"),
        "{err}"
    );
}
