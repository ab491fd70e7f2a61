//! The scheduler with real tool processes (no models): fan-out and fan-in, retries, argv
//! without a shell, timeouts that kill whole process groups, the SQLite store with resume and
//! exact replay, and the cache of identical calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use joule_executor::recorded::Recorded;
use joule_executor::runtime::{
    Cancel, Event, Executor, Job, Options, Prior, RunStatus, StepStatus,
};
use joule_executor::store::{NewRun, Store};
use joule_planner::catalog::Catalog;
use joule_planner::plan;
use joule_planner::profile::Profiles;
use joule_testkit::scheduler::{Events, catalog, compile, plan_on, run_with, tools};

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
        Arc::new(tools(&catalog)),
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
        Arc::new(tools(&catalog)),
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
        out.steps[1].status,
        StepStatus::NotRun,
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
        Arc::new(tools(&catalog)),
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
    args: { path: "../no-such-host-path" }
policy: { tools: [list] }
"#,
        &catalog,
    );
    let out = run_with(
        Arc::new(tools(&catalog)),
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
        Arc::new(tools(&catalog)),
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
            plan: &plan,
            options: &serde_json::json!({}),
        })
        .unwrap();
    let executor = Executor::new(
        Arc::new(tools(&catalog)),
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
    assert_eq!(summary[0].status, RunStatus::Succeeded);
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
                plan: &plan::empty(&compile(yaml, &catalog).workflow),
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
            Arc::new(tools(&catalog)),
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

/// A `for_each` wider than the workflow's fan-out cap fails the step, naming it, before any
/// element runs; without a cap of its own a workflow gets the default one.
#[tokio::test]
async fn a_for_each_past_the_fan_out_cap_fails_naming_the_step() {
    let catalog = catalog();
    for (policy, items, cap) in [("policy: { max_fan_out: 100 }\n", 101, 100), ("", 300, 256)] {
        let dag = compile(
            &format!(
                "name: wide\n{policy}steps:\n  many:\n    for_each: \"{{{{ range({items}) }}}}\"\n    value: \"{{{{ item }}}}\"\n"
            ),
            &catalog,
        );
        let mut events = Events::default();
        let out = run_with(
            Arc::new(tools(&catalog)),
            catalog.clone(),
            dag,
            "cpu",
            serde_json::json!({}),
            &mut [&mut events],
        )
        .await;
        assert_eq!(out.status, RunStatus::Failed);
        let e = out.error.unwrap();
        assert!(
            e.contains("step `many`") && e.contains(&format!("more than {cap} items")),
            "{e}"
        );
        assert_eq!(
            events.count(|e| matches!(e, Event::StepEnded { ok: true, .. })),
            0
        );
    }
    // At the cap it runs.
    let dag = compile(
        "name: wide\npolicy: { max_fan_out: 100 }\nsteps:\n  many:\n    for_each: \"{{ range(100) }}\"\n    value: \"{{ item }}\"\n",
        &catalog,
    );
    let out = run_with(
        Arc::new(tools(&catalog)),
        catalog,
        dag,
        "cpu",
        serde_json::json!({}),
        &mut [],
    )
    .await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
}
