//! Running workflows through the real scheduler in tests: a catalog of small test tools (real
//! programs: `echo`, `ls`, `sh`, `mktemp`), compiling, a plan that puts every llm step on one
//! device, and a sink that keeps every event for assertions.

use std::sync::Arc;

use joule_call::Backend;
use joule_executor::router::Router;
use joule_executor::runtime::{
    Cancel, Event, Executor, Job, Options, Outcome, Prior, Record, Sink, SinkError,
};
use joule_planner::catalog::Catalog;
use joule_planner::plan::{self, Plan};
use joule_planner::profile::Profiles;
use joule_planner::spec::Kind;
use joule_planner::{Dag, SourceFile};
use joule_sandbox::ToolBackend;

/// Keeps every event, for assertions.
#[derive(Default)]
pub struct Events(pub Vec<Record>);

impl Sink for Events {
    fn record(&mut self, r: &Record) -> Result<(), SinkError> {
        self.0.push(r.clone());
        Ok(())
    }
}

impl Events {
    pub fn count(&self, f: impl Fn(&Event) -> bool) -> usize {
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

/// The built-in catalog with the test tools instead of the shipped ones.
pub fn catalog() -> Catalog {
    #[derive(serde::Deserialize)]
    struct Tools {
        tools: Vec<joule_planner::catalog::Tool>,
    }
    let tools: Tools =
        joule_planner::spec::from_yaml(&SourceFile::new("tools.yaml", TOOLS)).expect("test tools");
    let mut catalog = Catalog::builtin();
    catalog.tools = tools.tools;
    catalog
}

pub fn compile(yaml: &str, catalog: &Catalog) -> Dag {
    joule_planner::compile_source(&SourceFile::new("w.yaml", yaml), &catalog.compile_context())
        .unwrap_or_else(|e| panic!("{e:?}"))
}

/// A plan that puts each llm step on `device` with model `m`.
pub fn plan_on(dag: &Dag, device: &str) -> Plan {
    let mut p = plan::empty(&dag.workflow);
    for (s, step) in p.steps.iter_mut().zip(&dag.workflow.steps) {
        if step.kind.kind() == Kind::Llm {
            s.model = Some("m".into());
            s.device = device.into();
        }
    }
    p
}

/// Tools run in the current directory's sandbox; no model backend.
pub fn tools(catalog: &Catalog) -> Router {
    Router::new().with_tools(Arc::new(ToolBackend::new(
        Arc::new(catalog.clone()),
        std::env::current_dir().expect("a current directory"),
    )))
}

/// Runs a compiled workflow with its llm steps planned on `device`.
pub async fn run_with(
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
    executor
        .run(job, sinks, &Cancel::new())
        .await
        .expect("the sinks accept every event")
}
