//! `joule profile` end to end on SmolLM2: it writes a profile of measured figures that the
//! planner loads, and keeps entries it did not re-measure (and the file's opening comment).

use crate::support::{ensure_smol, repo, run_in};
use joule_planner::figure::{Meter, Source};
use joule_planner::profile::Profiles;

#[test]
fn profiling_smollm2_writes_measured_figures_the_planner_uses() {
    ensure_smol();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("machine.yaml");
    // An earlier profile of another model: it must survive.
    std::fs::write(
        &out,
        "# My lab's box, measured by hand.\nname: mine\nhardware:\n  - { model: qwen2.5-coder-0.5b, device: cpu, decode_tps: { value: 9, source: measured, meter: clock } }\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run_in(
        dir.path(),
        &[
            "profile",
            "--models",
            "smollm2-135m",
            "--lengths",
            "8,16",
            "--decode",
            "8",
            "--repeats",
            "1",
            "--loads",
            "1",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["measured"][0]["model"], "smollm2-135m");
    assert!(
        stderr.contains("prefill 16 tokens"),
        "progress is shown: {stderr}"
    );

    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.starts_with("# My lab's box, measured by hand.\n"),
        "the file's own opening comment is kept: {text}"
    );
    let file = Profiles::load(&out).unwrap();
    assert_eq!(file.name, "mine");
    let mut profiles = Profiles::default();
    profiles.merge(file);
    assert!(
        profiles.hardware("qwen2.5-coder-0.5b", "cpu").is_some(),
        "the earlier entry is kept"
    );
    let h = profiles.hardware("smollm2-135m", "cpu").unwrap();
    for f in [&h.prefill_tps, &h.decode_tps, &h.load_s, &h.ttft_s] {
        let f = f.as_ref().expect("measured");
        assert_eq!((f.source, f.meter), (Source::Measured, Some(Meter::Clock)));
        assert!(f.value > 0.0 && f.note.as_ref().unwrap().contains("median of 1"));
    }
    // Power is written only when a real meter measured it.
    if let Some(w) = &h.active_w {
        assert!(matches!(w.meter, Some(Meter::Rapl | Meter::Nvml)));
    }

    // The planner reads it, and its decode speed is the measured one. The budgets go: a
    // one-repeat profile of a busy machine may rightly find the SLO out of reach.
    let text = std::fs::read_to_string(repo().join("workflows/ticket-triage.yaml")).unwrap();
    let wf = dir.path().join("triage.yaml");
    std::fs::write(
        &wf,
        text.replace("budget:\n  latency: 3m\n  energy: 5kJ\n  cost: $0.01\n", ""),
    )
    .unwrap();
    assert!(!std::fs::read_to_string(&wf).unwrap().contains("budget:"));
    let (code, plan, err) = run_in(
        dir.path(),
        &[
            "plan",
            wf.to_str().unwrap(),
            "--model",
            "smollm2-135m",
            "--profiles",
            out.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(code, 0, "{plan}\n{err}");
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert!(
        plan["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "mine")
    );
    let draft = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "draft")
        .unwrap();
    let (prefill, decode) = (
        h.prefill_tps.as_ref().unwrap().value,
        h.decode_tps.as_ref().unwrap().value,
    );
    let expected = draft["tokens_in"].as_f64().unwrap() / prefill
        + draft["tokens_out"].as_f64().unwrap() / decode;
    let predicted = draft["end_s"].as_f64().unwrap() - draft["start_s"].as_f64().unwrap();
    assert!(
        (predicted - expected).abs() < 1e-6 * expected,
        "predicted {predicted} s, measured figures give {expected} s"
    );
}

#[test]
fn the_shipped_profile_of_this_machine_kind_is_used_by_default() {
    let wf = repo().join("workflows/ticket-triage.yaml");
    let plan = |extra: &[&str]| {
        let out = crate::support::joule()
            .env_remove("JOULE_SHIPPED_PROFILES")
            .args(["plan", wf.to_str().unwrap(), "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let cpu = joule_executor::devices::cpu();
    let matching: Vec<String> = Profiles::shipped_for(&cpu.model, cpu.threads)
        .into_iter()
        .map(|f| f.name)
        .collect();
    let used = plan(&[]);
    let without = plan(&["--no-machine-profiles"]);
    for (path, text) in joule_planner::profile::SHIPPED {
        let file = Profiles::parse(&joule_planner::SourceFile::new(path, text)).unwrap();
        let name = file.name.as_str();
        assert_eq!(
            used.iter().any(|p| p == name),
            matching.iter().any(|m| m == name),
            "{name} is used exactly where this machine ({} with {} threads) matches it: {used:?}",
            cpu.model,
            cpu.threads
        );
        assert!(
            !without.iter().any(|p| p == name),
            "--no-machine-profiles leaves it out"
        );
    }
}

#[test]
fn an_endpoint_is_profiled_through_its_http_api() {
    let server = crate::support::server();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("machine.yaml");
    let url = format!("lan-joule={}/v1", server.base);
    let (code, stdout, stderr) = run_in(
        dir.path(),
        &[
            "profile",
            "--devices",
            "lan-joule",
            "--endpoint",
            &url,
            "--models",
            "smollm2-135m",
            "--lengths",
            "8,64",
            "--decode",
            "8",
            "--repeats",
            "1",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["measured"][0]["device"], "lan-joule");
    let mut profiles = Profiles::default();
    profiles.merge(Profiles::load(&out).unwrap());
    let h = profiles.hardware("smollm2-135m", "lan-joule").unwrap();
    for f in [&h.overhead_s, &h.decode_tps, &h.ttft_s] {
        let f = f.as_ref().expect("measured over HTTP");
        assert_eq!((f.source, f.meter), (Source::Measured, Some(Meter::Clock)));
        assert!(f.value > 0.0);
    }
    // Nothing is claimed that cannot be seen from outside: no load, memory or power.
    assert!(h.load_s.is_none() && h.memory_gb.is_none() && h.active_w.is_none());
}
