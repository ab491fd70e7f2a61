//! The agent step's loop with real tool processes and a scripted model: a tool call outside the
//! agent's tools is refused and recorded and nothing runs; a kill mid-loop resumes without
//! running a finished tool call again; a replay reproduces the loop call by call.
//!
//! The model is `Scripted`, a mock named so: its answers are written here, because no real
//! model can be relied on to ask for a forbidden tool on cue. The loop on a real model is
//! tested in the workspace's `tests/it/agent.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use joule_call::{Answer, Backend, Call, CallFuture, Cancel, OnTokens, Site, ToolUse, Turn};
use joule_executor::recorded::Recorded;
use joule_executor::router::Router;
use joule_executor::runtime::{Event, Executor, Job, Options, Prior, RunStatus};
use joule_executor::store::{NewRun, Store};
use joule_planner::catalog::Catalog;
use joule_planner::profile::Profiles;
use joule_testkit::scheduler::{Events, catalog, compile, plan_on, tools};

/// A model that, on its first turn, asks for `random` (offered), `list` (not offered) and
/// `echo`; on its next, answers with what `random` printed.
#[derive(Default)]
struct Scripted {
    calls: AtomicUsize,
}

impl Backend for Scripted {
    fn call<'a>(
        &'a self,
        _site: &'a Site,
        call: &'a Call,
        _cancel: &'a Cancel,
        _on_tokens: &'a OnTokens,
    ) -> CallFuture<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let Call::Llm(c) = call else {
            unreachable!("the router sends tools elsewhere")
        };
        let mut answer = Answer {
            tokens_in: 40,
            tokens_out: 8,
            ..Answer::default()
        };
        if c.turns.is_empty() {
            assert_eq!(c.tools.len(), 2, "the agent's two tools are offered");
            let use_ = |name: &str, args: serde_json::Value| ToolUse {
                id: format!("engine-{name}"),
                name: name.into(),
                arguments: args,
            };
            answer.tool_calls = vec![
                use_("random", serde_json::json!({"prefix": "r"})),
                use_("list", serde_json::json!({"path": "."})),
                use_("echo", serde_json::json!({"text": "hi"})),
            ];
        } else {
            let result = c
                .turns
                .iter()
                .find_map(|t| match t {
                    Turn::Tool { id, content } if id == "call_1_0" => Some(content.clone()),
                    _ => None,
                })
                .expect("the result of the first call is in the conversation");
            answer.text = format!("random said {result}");
        }
        Box::pin(std::future::ready(Ok(answer)))
    }
}

const WORKFLOW: &str = r#"
name: agent
steps:
  research:
    task: answer
    prompt: "Find a random name."
    max_tokens: 32
    agent:
      tools: [random, echo]
      max_turns: 3
outputs:
  answer: "{{ steps.research.output }}"
policy: { tools: [random, echo] }
"#;

fn router(catalog: &Catalog, model: Arc<Scripted>) -> Router {
    tools(catalog).with_device("cpu", model)
}

fn started(events: &Events) -> Vec<(u32, String)> {
    events
        .0
        .iter()
        .filter_map(|r| match &r.event {
            Event::AttemptStarted { attempt, call, .. } => Some((
                *attempt,
                call["tool"].as_str().unwrap_or("model").to_string(),
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn an_agent_loop_is_policed_resumed_without_repeating_tools_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog();
    let dag = compile(WORKFLOW, &catalog);
    let plan = plan_on(&dag, "cpu");
    let mut store = Store::open(&dir.path().join("runs.db")).unwrap();
    let id = store.new_run_id().unwrap();
    store
        .create_run(&NewRun {
            id: &id,
            workflow: "agent",
            file: "w.yaml",
            source: WORKFLOW,
            inputs: &serde_json::json!({}),
            plan: &plan,
            options: &serde_json::json!({}),
        })
        .unwrap();
    let job = |prior| Job {
        run_id: id.clone(),
        dag: Arc::new(compile(WORKFLOW, &catalog)),
        plan: plan.clone(),
        problem: None,
        inputs: serde_json::Map::new(),
        prior,
    };
    let model = Arc::new(Scripted::default());
    let executor = Executor::new(
        Arc::new(router(&catalog, model.clone())),
        Arc::new(catalog.clone()),
        Arc::new(Profiles::reference()),
        Options::default(),
    );
    let mut events = Events::default();
    let first = executor
        .run(
            job(Prior::default()),
            &mut [&mut store, &mut events],
            &Cancel::new(),
        )
        .await
        .unwrap();
    assert_eq!(first.status, RunStatus::Succeeded, "{:?}", first.error);
    let answer = first.outputs["answer"].as_str().unwrap().to_string();
    assert!(
        answer.starts_with("random said ") && answer.len() > 20,
        "{answer}"
    );

    // The call outside the agent's tools was refused, recorded, and never started.
    assert_eq!(
        started(&events),
        [
            (1, "model".to_string()),
            (2, "random".to_string()),
            (3, "echo".to_string()),
            (4, "model".to_string())
        ]
    );
    let refused: Vec<_> = events
        .0
        .iter()
        .filter_map(|r| match &r.event {
            Event::AgentToolCall {
                tool,
                attempt,
                refused: Some(why),
                ..
            } => Some((tool.clone(), *attempt, why.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!((refused[0].0.as_str(), refused[0].1), ("list", None));
    assert!(refused[0].2.contains("not one of this agent's tools"));
    assert_eq!(
        events.count(
            |e| matches!(e, Event::PolicyRefused { reason, .. } if reason.contains("`list`"))
        ),
        1
    );
    // The tool calls that ran are in the log with a hash of what they printed.
    let ran = events.count(|e| {
        matches!(e, Event::AgentToolCall { attempt: Some(_), result_sha256: Some(h), .. } if h.len() == 64)
    });
    assert_eq!(ran, 2);
    // Calibration sees two model calls; the last says how many turns the loop took.
    let turns: Vec<_> = first.observations.iter().map(|o| o.turns).collect();
    assert_eq!(turns, [None, Some(2)]);

    // Killed after the tool calls, before the final answer: forget the step and the last call.
    let mut prior = store.prior(&id).unwrap();
    prior.steps.remove("research");
    // What `Store::prior` keeps of a step that had not finished: its successful attempts.
    prior.calls = store
        .recorded(&id)
        .unwrap()
        .into_iter()
        .filter(|(site, (_, answer))| answer.is_ok() && site.attempt < 4)
        .collect();
    assert_eq!(prior.calls.len(), 3, "model turn 1, random, echo");
    prior.spent = store.spent(&id).unwrap();
    prior.spent.retain(|site, _| prior.calls.contains_key(site));
    store.reopen_run(&id).unwrap();
    let model_calls = model.calls.load(Ordering::SeqCst);
    let mut events = Events::default();
    let resumed = executor
        .run(job(prior), &mut [&mut store, &mut events], &Cancel::new())
        .await
        .unwrap();
    assert_eq!(resumed.status, RunStatus::Succeeded, "{:?}", resumed.error);
    // `random` did not run again: its name would differ, and so would the answer.
    assert_eq!(resumed.outputs["answer"], answer.as_str());
    assert_eq!(started(&events), [(4, "model".to_string())]);
    assert_eq!(model.calls.load(Ordering::SeqCst), model_calls + 1);
    // The reused calls count in the step's cost: both model turns' tokens, as the first run.
    let tokens = |o: &joule_executor::runtime::Outcome| {
        let s = o.steps.iter().find(|s| s.id == "research").unwrap();
        (s.figures.tokens_in, s.figures.tokens_out)
    };
    assert_eq!(tokens(&resumed), tokens(&first));
    assert_eq!(tokens(&first), (80, 16));

    // A replay answers every attempt from the record and checks each call is the one sent.
    let replayer = Executor::new(
        Arc::new(Recorded {
            answers: store.recorded(&id).unwrap(),
        }),
        Arc::new(catalog.clone()),
        Arc::new(Profiles::reference()),
        Options {
            no_backoff: true,
            ..Options::default()
        },
    );
    let mut events = Events::default();
    let replay = replayer
        .run(job(Prior::default()), &mut [&mut events], &Cancel::new())
        .await
        .unwrap();
    assert_eq!(replay.status, RunStatus::Succeeded, "{:?}", replay.error);
    assert_eq!(replay.outputs, first.outputs);
    assert_eq!(started(&events).len(), 4, "the loop, call by call");
}
