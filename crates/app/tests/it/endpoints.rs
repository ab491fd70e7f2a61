//! The scheduler with the real HTTP client against real faults over TCP (the fault injector
//! plays remote engines): rate limits, hangs, cut streams, fallback to the next config,
//! re-planning a run that falls behind its SLO, output constraints, and the local-only policy
//! enforced at plan time and before every call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use joule_call::Backend;
use joule_executor::recorded::Recorded;
use joule_executor::router::Router;
use joule_executor::runtime::{Cancel, Event, Executor, Job, Options, Outcome, Prior, RunStatus};
use joule_executor::store::{NewRun, Store};
use joule_models::openai::{OpenAiBackend, RetryPolicy};
use joule_planner::catalog::Catalog;
use joule_planner::estimate::{Config, Problem, StepChoices};
use joule_planner::figure::Source;
use joule_planner::plan;
use joule_planner::profile::Profiles;
use joule_planner::spec::{Budget, Objective};
use joule_planner::{Dag, SourceFile};
use joule_testkit::scheduler::{Events, catalog, compile, plan_on, run_with, tools};
use joule_testkit::{Fault, injector};

fn endpoint_workflow(catalog: &Catalog, timeout: &str) -> Dag {
    compile(
        &format!(
            r#"
name: remote
policy: {{ providers: [lan-joule] }}
steps:
  ask:
    prompt: "say hi"
    max_tokens: 4
    retry: 1
    backoff: 10ms
    timeout: {timeout}
outputs:
  answer: "{{{{ steps.ask.output }}}}"
"#
        ),
        catalog,
    )
}

fn endpoint_router(catalog: &Catalog, url: &str) -> Arc<dyn Backend> {
    let policy = RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        deadline: Duration::from_secs(5),
    };
    let _ = catalog;
    Arc::new(Router::new().with_device(
        "lan-joule",
        Arc::new(OpenAiBackend::new(url, None, policy).unwrap()),
    ))
}

fn config(model: Option<&str>, device: &str, latency_s: f64, energy_j: f64) -> Config {
    Config {
        model: model.map(str::to_string),
        device: device.into(),
        resource: None,
        residency: None,
        latency_s,
        energy_j,
        cost_usd: 0.0,
        quality: None,
        loss: None,
        basis: None,
        calls: 1,
        tokens_in: 10.0,
        tokens_out: 4.0,
        tokens_learned: 0,
        source: Source::Estimate,
    }
}

fn problem(steps: Vec<(&str, Vec<Config>, Vec<usize>)>, slo: Option<f64>) -> Problem {
    Problem {
        steps: steps
            .into_iter()
            .map(|(id, configs, preds)| StepChoices {
                id: id.into(),
                configs,
                preds,
                excluded: Vec::new(),
            })
            .collect(),
        resources: Vec::new(),
        residencies: Vec::new(),
        budget: Budget {
            latency_s: slo,
            ..Budget::default()
        },
        objective: Objective::Energy,
    }
}

fn two_endpoints(catalog: &Catalog, a: (&str, &str), b: (&str, &str)) -> Arc<dyn Backend> {
    let policy = RetryPolicy {
        attempts: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
        deadline: Duration::from_secs(5),
    };
    Arc::new(
        tools(catalog)
            .with_device(
                a.0,
                Arc::new(OpenAiBackend::new(a.1, None, policy).unwrap()),
            )
            .with_device(
                b.0,
                Arc::new(OpenAiBackend::new(b.1, None, policy).unwrap()),
            ),
    )
}

async fn run_job(
    backend: Arc<dyn Backend>,
    catalog: Catalog,
    job: Job,
    events: &mut Events,
) -> Outcome {
    Executor::new(
        backend,
        Arc::new(catalog),
        Arc::new(Profiles::reference()),
        Options::default(),
    )
    .run(job, &mut [events], &Cancel::new())
    .await
    .unwrap()
}

#[tokio::test]
async fn an_endpoint_that_rate_limits_then_answers_completes_the_run() {
    let catalog = catalog();
    let (url, script) = injector(vec![
        Fault::Status(429, None),
        Fault::Stream(&["hel", "lo"]),
    ])
    .await;
    let dag = endpoint_workflow(&catalog, "5s");
    let mut events = Events::default();
    let out = run_with(
        endpoint_router(&catalog, &url),
        catalog,
        dag,
        "lan-joule",
        serde_json::json!({}),
        &mut [&mut events],
    )
    .await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    assert_eq!(out.outputs["answer"], "hello");
    assert_eq!(script.lock().unwrap().requests, 2);
    let step = &out.steps[0];
    assert_eq!((step.figures.tokens_in, step.figures.tokens_out), (3, 2));
}

#[tokio::test]
async fn hanging_failing_and_cut_endpoints_end_the_run_instead_of_hanging_it() {
    for (faults, expect) in [
        (vec![Fault::Hang, Fault::Hang], "timed out"),
        (vec![Fault::Status(500, None); 8], "HTTP 500"),
        (vec![Fault::Cut(&["par", "tial"]); 8], "before `[DONE]`"),
    ] {
        let catalog = catalog();
        let (url, _) = injector(faults).await;
        let dag = endpoint_workflow(&catalog, "1s");
        let started = Instant::now();
        let out = run_with(
            endpoint_router(&catalog, &url),
            catalog,
            dag,
            "lan-joule",
            serde_json::json!({}),
            &mut [],
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{expect}: the run hung"
        );
        assert_eq!(out.status, RunStatus::Failed, "{expect}");
        let error = out.error.unwrap();
        assert!(error.contains(expect), "{expect}: {error}");
    }
}

#[tokio::test]
async fn when_a_config_keeps_failing_the_next_best_allowed_one_runs_the_step() {
    let catalog = catalog();
    let (bad, _) = injector(vec![Fault::Status(500, None); 10]).await;
    let (good, _) = injector(vec![Fault::Stream(&["fine"])]).await;
    let dag = compile(
        r#"
name: fallback
policy: { providers: [lan-joule] }
steps:
  ask:
    prompt: "hi"
    max_tokens: 4
outputs:
  a: "{{ steps.ask.output }}"
"#,
        &catalog,
    );
    // The fault injector plays two endpoints the catalog does not have; the policy allows them.
    let mut dag = dag;
    dag.workflow.policy.providers = vec!["primary".into(), "spare".into()];
    let mut plan = plan_on(&dag, "primary");
    plan.steps[0].model = Some("m".into());
    let job = Job {
        run_id: "fallback".into(),
        plan,
        problem: Some(problem(
            vec![(
                "ask",
                vec![
                    config(Some("m"), "primary", 1.0, 1.0),
                    config(Some("m"), "spare", 1.0, 2.0),
                ],
                vec![],
            )],
            None,
        )),
        dag: Arc::new(dag),
        inputs: Default::default(),
        prior: Prior::default(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("runs.db")).unwrap();
    store
        .create_run(&NewRun {
            id: "fallback",
            workflow: "fallback",
            file: "w.yaml",
            source: "",
            inputs: &serde_json::json!({}),
            plan: &plan::empty(&job.dag.workflow),
            options: &serde_json::json!({}),
        })
        .unwrap();
    let replay_job = Job {
        run_id: "replay".into(),
        dag: job.dag.clone(),
        plan: job.plan.clone(),
        problem: None,
        inputs: Default::default(),
        prior: Prior::default(),
    };
    let mut events = Events::default();
    let out = Executor::new(
        two_endpoints(&catalog, ("primary", &bad), ("spare", &good)),
        Arc::new(catalog.clone()),
        Arc::new(Profiles::reference()),
        Options::default(),
    )
    .run(job, &mut [&mut events, &mut store], &Cancel::new())
    .await
    .unwrap();
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    assert_eq!(out.outputs["a"], "fine");
    assert_eq!(out.steps[0].config.device, "spare");
    assert_eq!(
        events.count(|e| matches!(e, Event::Fallback { to, .. } if to.device == "spare")),
        1
    );

    // The replay fails over exactly as the run did, from the record alone.
    let recorded = Recorded {
        answers: store.recorded("fallback").unwrap(),
    };
    let configs = recorded.configs();
    assert_eq!(configs["ask"].len(), 2);
    let replay = Executor::new(
        Arc::new(recorded),
        Arc::new(catalog),
        Arc::new(Profiles::reference()),
        Options {
            no_backoff: true,
            replan: false,
            configs,
            ..Options::default()
        },
    )
    .run(replay_job, &mut [], &Cancel::new())
    .await
    .unwrap();
    assert_eq!(replay.status, RunStatus::Succeeded, "{:?}", replay.error);
    assert_eq!(replay.outputs, out.outputs);
}

#[tokio::test]
async fn a_run_behind_its_slo_replans_the_steps_not_yet_started() {
    let catalog = catalog();
    let (slow, slow_script) = injector(vec![Fault::Stream(&["slow answer"])]).await;
    let (fast, _) = injector(vec![Fault::Stream(&["fast answer"])]).await;
    let dag = compile(
        r#"
name: late
budget: { latency: 10s }
policy: { providers: [lan-joule], tools: [nap] }
steps:
  first:
    tool: nap
  second:
    prompt: "{{ steps.first.output }}, now answer"
    max_tokens: 4
outputs:
  a: "{{ steps.second.output }}"
"#,
        &catalog,
    );
    let mut dag = dag;
    dag.workflow.policy.providers = vec!["slow".into(), "fast".into()];
    // The plan expected `first` to take 10 ms and put `second` on the frugal, slow config,
    // finishing at 9 s of a 10 s SLO; `first` really takes 1.5 s.
    let mut plan = plan_on(&dag, "slow");
    plan.steps[0].end_s = 0.01;
    plan.steps[1].start_s = 0.01;
    plan.steps[1].end_s = 9.0;
    plan.totals.latency_s = 9.0;
    let job = Job {
        run_id: "late".into(),
        plan,
        problem: Some(problem(
            vec![
                ("first", vec![config(None, "host", 0.01, 0.1)], vec![]),
                (
                    "second",
                    vec![
                        config(Some("m"), "slow", 8.99, 1.0),
                        config(Some("m"), "fast", 0.5, 5.0),
                    ],
                    vec![0],
                ),
            ],
            Some(10.0),
        )),
        dag: Arc::new(dag),
        inputs: Default::default(),
        prior: Prior::default(),
    };
    let mut events = Events::default();
    let out = run_job(
        two_endpoints(&catalog, ("slow", &slow), ("fast", &fast)),
        catalog,
        job,
        &mut events,
    )
    .await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    assert_eq!(out.outputs["a"], "fast answer");
    assert_eq!(out.replans, 1);
    let moved = events.0.iter().find_map(|r| match &r.event {
        Event::Replanned {
            changes,
            projected_s,
            ..
        } => Some((changes.clone(), *projected_s)),
        _ => None,
    });
    let (changes, projected) = moved.expect("a re-plan event");
    assert!(projected > 10.0, "projected {projected}");
    assert_eq!(changes.len(), 1);
    assert_eq!(
        (changes[0].0.as_str(), changes[0].2.device.as_str()),
        ("second", "fast")
    );
    assert_eq!(
        slow_script.lock().unwrap().requests,
        0,
        "the slow config was never called"
    );
}

#[tokio::test]
async fn an_answer_that_breaks_its_output_constraint_is_retried_with_sampling() {
    let catalog = catalog();
    let (url, _) = injector(vec![Fault::Stream(&["maybe"]), Fault::Stream(&["Bug."])]).await;
    let dag = compile(
        r#"
name: pick
policy: { providers: [lan-joule] }
steps:
  label:
    prompt: "bug or feature?"
    max_tokens: 4
    retry: 1
    backoff: 10ms
    output: [bug, feature]
outputs:
  a: "{{ steps.label.output }}"
"#,
        &catalog,
    );
    let mut events = Events::default();
    let out = run_with(
        endpoint_router(&catalog, &url),
        catalog,
        dag,
        "lan-joule",
        serde_json::json!({}),
        &mut [&mut events],
    )
    .await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    assert_eq!(out.outputs["a"], "bug");
    let temperatures: Vec<f64> = events
        .0
        .iter()
        .filter_map(|r| match &r.event {
            Event::AttemptStarted { call, .. } => call["temperature"].as_f64(),
            _ => None,
        })
        .collect();
    assert_eq!(temperatures, [0.0, 0.7], "greedy first, then sampled");
    let failed = events.0.iter().find_map(|r| match &r.event {
        Event::AttemptEnded {
            ok: false, error, ..
        } => error.clone(),
        _ => None,
    });
    assert!(failed.unwrap().contains("not one of: bug, feature"));
}

/// `providers: [local]`: the planner never proposes the endpoint, even though it is cheaper
/// (compile and plan time); and a plan that puts the step there anyway (forged, or stale) is
/// refused by the executor before any request leaves, with the refusal recorded.
#[tokio::test]
async fn a_local_only_policy_is_enforced_at_plan_time_and_at_run_time() {
    let catalog = catalog();
    let workflow = |providers: &str| {
        format!(
            "name: private\nobjective: cost\npolicy: {{ providers: [{providers}] }}\nsteps:\n  ask:\n    prompt: \"summarise the contract\"\n    max_tokens: 8\noutputs:\n  a: \"{{{{ steps.ask.output }}}}\"\n"
        )
    };
    let env = joule_planner::estimate::Environment {
        devices: vec!["cpu".into()],
        ..Default::default()
    };
    let plan_for = |providers: &str| {
        let dag = compile(&workflow(providers), &catalog);
        joule_planner::plan::plan(
            &dag,
            &catalog,
            &Profiles::reference(),
            &env,
            &joule_planner::plan::Request::default(),
        )
        .unwrap()
    };
    // With the endpoint allowed, it is the cheapest place for the step (it charges nothing)...
    assert_eq!(plan_for("local, lan-joule").steps[0].device, "lan-joule");
    // ...and with `local` only, the plan never goes there.
    assert_eq!(plan_for("local").steps[0].device, "cpu");

    // Pinning the step there is a compile error, at the pin.
    let pinned = workflow("local").replace("max_tokens: 8", "max_tokens: 8\n    device: lan-joule");
    let errors = joule_planner::compile_source(
        &SourceFile::new("w.yaml", &pinned),
        &catalog.compile_context(),
    )
    .unwrap_err();
    assert!(
        errors.iter().any(|e| e
            .message
            .contains("endpoint `lan-joule` is not in `policy.providers`")),
        "{errors:?}"
    );

    // A plan that does anyway is refused before the request is sent.
    let (url, script) = injector(vec![Fault::Stream(&["leaked"])]).await;
    let dag = compile(&workflow("local"), &catalog);
    let mut events = Events::default();
    let out = run_with(
        endpoint_router(&catalog, &url),
        catalog,
        dag,
        "lan-joule",
        serde_json::json!({}),
        &mut [&mut events],
    )
    .await;
    assert_eq!(out.status, RunStatus::Failed);
    assert!(
        out.error
            .as_deref()
            .unwrap()
            .contains("refused by the policy"),
        "{:?}",
        out.error
    );
    assert_eq!(
        script.lock().unwrap().requests,
        0,
        "nothing reached the endpoint"
    );
    assert_eq!(
        events.count(|e| matches!(e, Event::PolicyRefused { reason, .. } if reason.contains("`lan-joule` is not allowed"))),
        1
    );
    assert_eq!(
        events.count(|e| matches!(e, Event::AttemptStarted { .. })),
        0
    );
}
