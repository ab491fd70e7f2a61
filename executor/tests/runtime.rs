//! The scheduler without models: value and tool steps, real child processes, the fault
//! injector standing in for a remote endpoint, the SQLite store, resume and replay.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fault::{Fault, injector};
use joule_executor::backend::openai::{OpenAiBackend, RetryPolicy};
use joule_executor::backend::{Backend, Recorded, Router};
use joule_executor::runtime::{
    Cancel, Event, Executor, Job, Options, Outcome, Prior, Record, RunStatus, Sink, SinkError,
};
use joule_executor::store::{NewRun, Store};
use joule_planner::catalog::Catalog;
use joule_planner::estimate::{Config, Problem, StepChoices};
use joule_planner::figure::Source;
use joule_planner::plan::{self, Plan};
use joule_planner::profile::Profiles;
use joule_planner::spec::{Budget, Objective};
use joule_planner::{Dag, SourceFile};

/// Keeps every event, for assertions.
#[derive(Default)]
struct Events(Vec<Record>);

impl Sink for Events {
    fn record(&mut self, r: &Record) -> Result<(), SinkError> {
        self.0.push(r.clone());
        Ok(())
    }
}

impl Events {
    fn count(&self, f: impl Fn(&Event) -> bool) -> usize {
        self.0.iter().filter(|r| f(&r.event)).count()
    }
}

const TOOLS: &str = r#"
tools:
  - name: fail
    program: "false"
  - name: echo
    program: echo
    argv: ["{text}"]
    args:
      text: { type: string }
  - name: list
    program: ls
    argv: ["{path}"]
    args:
      path: { type: path }
  - name: sleep
    program: sh
    argv: ["-c", "sleep 30 & sleep 30", "sh"]
  - name: random
    program: mktemp
    argv: ["-u", "{prefix}.XXXXXXXXXX"]
    args:
      prefix: { type: string }
  - name: nap
    program: sh
    argv: ["-c", "sleep 1.5; echo slept"]
"#;

/// The built-in catalog with the test's tools instead of the shipped ones.
fn catalog() -> Catalog {
    #[derive(serde::Deserialize)]
    struct Tools {
        tools: Vec<joule_planner::catalog::Tool>,
    }
    let tools: Tools =
        joule_planner::spec::from_yaml(&SourceFile::new("tools.yaml", TOOLS)).unwrap();
    let mut catalog = Catalog::builtin();
    catalog.tools = tools.tools;
    catalog
}

fn compile(yaml: &str, catalog: &Catalog) -> Dag {
    joule_planner::compile_source(&SourceFile::new("w.yaml", yaml), &catalog.compile_context())
        .unwrap_or_else(|e| panic!("{e:?}"))
}

/// A plan that puts each llm step on `device` with model `m`.
fn plan_on(dag: &Dag, device: &str) -> Plan {
    let mut p = plan::empty(&dag.workflow);
    for (s, step) in p.steps.iter_mut().zip(&dag.workflow.steps) {
        if step.kind.name() == "llm" {
            s.model = Some("m".into());
            s.device = device.into();
        }
    }
    p
}

/// Runs a compiled workflow with its llm steps planned on `device`.
async fn run_with(
    backend: Arc<dyn Backend>,
    catalog: Catalog,
    dag: Dag,
    device: &str,
    inputs: serde_json::Value,
    sinks: &mut [&mut dyn Sink],
) -> Outcome {
    let plan = plan_on(&dag, device);
    let executor = Executor::new(
        backend,
        Arc::new(catalog),
        Arc::new(Profiles::reference()),
        Options::default(),
    );
    let job = Job {
        run_id: "test".into(),
        dag: Arc::new(dag),
        plan,
        problem: None,
        inputs: inputs.as_object().cloned().unwrap_or_default(),
        prior: Prior::default(),
    };
    executor.run(job, sinks, &Cancel::new()).await.unwrap()
}

fn router(catalog: &Catalog) -> Arc<dyn Backend> {
    Arc::new(Router::new(
        Arc::new(catalog.clone()),
        std::env::current_dir().unwrap(),
    ))
}

#[tokio::test]
async fn for_each_fans_out_and_a_later_step_fans_in() {
    let catalog = catalog();
    let dag = compile(
        r#"
name: fan
inputs:
  words: { type: array }
steps:
  shout:
    for_each: "{{ inputs.words }}"
    value: "{{ item | upper }}"
  echoed:
    for_each: "{{ steps.shout.output }}"
    tool: echo
    args: { text: "{{ item }}!" }
  joined:
    value: "{{ steps.echoed.output | join(' ') }}"
  never:
    when: "{{ steps.joined.output | length > 1000 }}"
    value: "unreachable"
outputs:
  all: "{{ steps.joined.output }}"
  skipped: "{% if steps.never.output is none %}skipped{% endif %}"
policy: { tools: [echo] }
"#,
        &catalog,
    );
    let mut events = Events::default();
    let out = run_with(
        router(&catalog),
        catalog,
        dag,
        "cpu",
        serde_json::json!({"words": ["a", "b", "c"]}),
        &mut [&mut events],
    )
    .await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    assert_eq!(out.outputs["all"], "A! B! C!");
    assert_eq!(out.outputs["skipped"], "skipped");
    assert_eq!(events.count(|e| matches!(e, Event::ElementEnded { .. })), 3);
    assert_eq!(
        events.count(|e| matches!(e, Event::StepSkipped { step, .. } if step == "never")),
        1
    );
}

#[tokio::test]
async fn a_failing_tool_is_retried_then_fails_the_run_with_its_error() {
    let catalog = catalog();
    let dag = compile(
        r#"
name: failing
steps:
  broken:
    tool: fail
    retry: 2
    backoff: 10ms
  after:
    value: "{{ steps.broken.output }}"
policy: { tools: [fail] }
"#,
        &catalog,
    );
    let mut events = Events::default();
    let out = run_with(
        router(&catalog),
        catalog,
        dag,
        "cpu",
        serde_json::json!({}),
        &mut [&mut events],
    )
    .await;
    assert_eq!(out.status, RunStatus::Failed);
    let error = out.error.unwrap();
    assert!(error.contains("step `broken`"), "{error}");
    assert!(error.contains("exit code 1"), "{error}");
    assert!(error.contains("after 3 attempts"), "{error}");
    assert_eq!(
        events.count(|e| matches!(e, Event::AttemptStarted { .. })),
        3
    );
    assert_eq!(
        out.steps[1].status, "not_run",
        "nothing runs after a failure"
    );
}

#[tokio::test]
async fn tool_arguments_are_argv_never_shell_and_paths_stay_inside() {
    let catalog = catalog();
    let marker = std::env::temp_dir().join(format!("joule-pwned-{}", std::process::id()));
    let dag = compile(
        r#"
name: hostile
inputs:
  text: { type: string }
steps:
  say:
    tool: echo
    args: { text: "{{ inputs.text }}" }
outputs:
  said: "{{ steps.say.output }}"
policy: { tools: [echo] }
"#,
        &catalog,
    );
    let hostile = format!(
        "$(touch {m}); `touch {m}`; echo hi > {m}",
        m = marker.display()
    );
    let out = run_with(
        router(&catalog),
        catalog.clone(),
        dag,
        "cpu",
        serde_json::json!({ "text": hostile }),
        &mut [],
    )
    .await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    assert_eq!(out.outputs["said"], hostile.as_str());
    assert!(!marker.exists(), "the text reached a shell");

    let dag = compile(
        r#"
name: escape
steps:
  peek:
    tool: list
    args: { path: "../../../../etc" }
policy: { tools: [list] }
"#,
        &catalog,
    );
    let out = run_with(
        router(&catalog),
        catalog,
        dag,
        "cpu",
        serde_json::json!({}),
        &mut [],
    )
    .await;
    assert_eq!(out.status, RunStatus::Failed);
    let error = out.error.unwrap();
    assert!(
        error.contains("outside the workflow's directory"),
        "{error}"
    );
}

#[tokio::test]
async fn a_tool_past_its_timeout_is_killed_with_its_children() {
    let catalog = catalog();
    let dag = compile(
        r#"
name: slow
steps:
  nap:
    tool: sleep
    timeout: 300ms
policy: { tools: [sleep] }
"#,
        &catalog,
    );
    let started = Instant::now();
    let out = run_with(
        router(&catalog),
        catalog,
        dag,
        "cpu",
        serde_json::json!({}),
        &mut [],
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the run did not wait for the tool"
    );
    assert_eq!(out.status, RunStatus::Failed);
    assert!(
        out.error
            .as_deref()
            .unwrap()
            .contains("limit and was killed"),
        "{:?}",
        out.error
    );
}

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
    Arc::new(
        Router::new(Arc::new(catalog.clone()), std::env::current_dir().unwrap())
            .with_endpoint("lan-joule", OpenAiBackend::new(url, None, policy).unwrap()),
    )
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
async fn the_store_resumes_without_rerunning_and_replays_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let catalog = catalog();
    let yaml = r#"
name: chain
inputs:
  n: { type: integer }
steps:
  a:
    tool: echo
    args: { text: "a{{ inputs.n }}" }
  b:
    for_each: "{{ [1, 2, 3] }}"
    tool: echo
    args: { text: "{{ steps.a.output }}-{{ item }}" }
  c:
    tool: echo
    args: { text: "{{ steps.b.output | join('+') }}" }
outputs:
  c: "{{ steps.c.output }}"
policy: { tools: [echo] }
"#;
    let dag = compile(yaml, &catalog);
    let plan = plan_on(&dag, "cpu");
    let inputs = serde_json::json!({"n": 7});
    let mut store = Store::open(&db).unwrap();
    let id = store.new_run_id().unwrap();
    store
        .create_run(&NewRun {
            id: &id,
            workflow: "chain",
            file: "w.yaml",
            source: yaml,
            inputs: &inputs,
            plan: &plan.to_json(),
            options: &serde_json::json!({}),
        })
        .unwrap();
    let executor = Executor::new(
        router(&catalog),
        Arc::new(catalog.clone()),
        Arc::new(Profiles::reference()),
        Options::default(),
    );
    let job = |prior| Job {
        run_id: id.clone(),
        dag: Arc::new(compile(yaml, &catalog)),
        plan: plan.clone(),
        problem: None,
        inputs: inputs.as_object().cloned().unwrap(),
        prior,
    };
    let first = executor
        .run(job(Prior::default()), &mut [&mut store], &Cancel::new())
        .await
        .unwrap();
    assert_eq!(first.outputs["c"], "a7-1+a7-2+a7-3");

    // Forget that `c` and one element of `b` finished, as a kill between them would.
    let mut prior = store.prior(&id).unwrap();
    assert_eq!(prior.steps.len(), 3);
    prior.steps.remove("c");
    prior.steps.remove("b");
    prior.elements.remove(&("b".to_string(), 1));
    let mut events = Events::default();
    store.reopen_run(&id).unwrap();
    let resumed = executor
        .run(job(prior), &mut [&mut store, &mut events], &Cancel::new())
        .await
        .unwrap();
    assert_eq!(resumed.outputs, first.outputs);
    let ran: Vec<(String, Option<usize>)> = events
        .0
        .iter()
        .filter_map(|r| match &r.event {
            Event::AttemptStarted { step, index, .. } => Some((step.clone(), *index)),
            _ => None,
        })
        .collect();
    assert_eq!(
        ran,
        [("b".to_string(), Some(1)), ("c".to_string(), None)],
        "only unfinished work ran again"
    );

    // A replay answers from the record: no process runs, and the outputs match.
    let recorded = store.recorded(&id).unwrap();
    assert_eq!(recorded.len(), 5, "a, three elements of b, and c");
    let replayer = Executor::new(
        Arc::new(Recorded { answers: recorded }),
        Arc::new(Catalog::builtin()),
        Arc::new(Profiles::reference()),
        Options {
            no_backoff: true,
            ..Options::default()
        },
    );
    let replay = replayer
        .run(job(Prior::default()), &mut [], &Cancel::new())
        .await
        .unwrap();
    assert_eq!(replay.status, RunStatus::Succeeded, "{:?}", replay.error);
    assert_eq!(replay.outputs, first.outputs);

    // A different input changes a call, and the replay says where it diverged.
    let mut changed = job(Prior::default());
    changed.inputs.insert("n".into(), serde_json::json!(8));
    let recorded = store.recorded(&id).unwrap();
    let replayer = Executor::new(
        Arc::new(Recorded { answers: recorded }),
        Arc::new(Catalog::builtin()),
        Arc::new(Profiles::reference()),
        Options {
            no_backoff: true,
            ..Options::default()
        },
    );
    let diverged = replayer
        .run(changed, &mut [], &Cancel::new())
        .await
        .unwrap();
    assert_eq!(diverged.status, RunStatus::Failed);
    assert!(diverged.error.unwrap().contains("diverged at step `a`"));
    let summary = store.list(10).unwrap();
    assert_eq!(summary[0].id, id);
    assert_eq!(summary[0].status, "succeeded");
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
        Router::new(Arc::new(catalog.clone()), std::env::current_dir().unwrap())
            .with_endpoint(a.0, OpenAiBackend::new(a.1, None, policy).unwrap())
            .with_endpoint(b.0, OpenAiBackend::new(b.1, None, policy).unwrap()),
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
            plan: &serde_json::json!({}),
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

#[tokio::test]
async fn a_cached_step_reuses_an_identical_earlier_call_instead_of_running_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("runs.db")).unwrap();
    let catalog = catalog();
    let yaml = r#"
name: cached
policy: { tools: [random] }
steps:
  now:
    tool: random
    args: { prefix: a }
    cache: true
  uncached:
    tool: random
    args: { prefix: b }
outputs:
  now: "{{ steps.now.output }}"
  uncached: "{{ steps.uncached.output }}"
"#;
    let mut outputs = Vec::new();
    let mut cached = Vec::new();
    for run in ["first", "second"] {
        store
            .create_run(&NewRun {
                id: run,
                workflow: "cached",
                file: "w.yaml",
                source: yaml,
                inputs: &serde_json::json!({}),
                plan: &serde_json::json!({}),
                options: &serde_json::json!({}),
            })
            .unwrap();
        let dag = compile(yaml, &catalog);
        let job = Job {
            run_id: run.into(),
            plan: plan_on(&dag, "cpu"),
            dag: Arc::new(dag),
            problem: None,
            inputs: Default::default(),
            prior: Prior::default(),
        };
        let mut events = Events::default();
        let executor = Executor::new(
            router(&catalog),
            Arc::new(catalog.clone()),
            Arc::new(Profiles::reference()),
            Options::default(),
        )
        .with_cache(Arc::new(store.cache().unwrap()));
        let out = executor
            .run(job, &mut [&mut store, &mut events], &Cancel::new())
            .await
            .unwrap();
        assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
        outputs.push(out.outputs);
        cached.push(events.count(|e| matches!(e, Event::AttemptEnded { cached: true, .. })));
    }
    assert_eq!(
        cached,
        [0, 1],
        "only the second run's `now` is answered from the store"
    );
    assert_eq!(
        outputs[0]["now"], outputs[1]["now"],
        "the cached step kept its answer"
    );
    assert_ne!(
        outputs[0]["uncached"], outputs[1]["uncached"],
        "the clock really ran again"
    );
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
