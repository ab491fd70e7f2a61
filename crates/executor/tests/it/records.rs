//! A run's records are plain data: the report and the plan stored with a run read back field
//! for field, and a store written by joule 0.1 (before the workspace split) still opens, with
//! its plans and reports typed.

use std::sync::Arc;

use joule_executor::report::Report;
use joule_executor::runtime::{RunStatus, StepStatus};
use joule_executor::store::{NewRun, Store};
use joule_planner::spec::Kind;
use joule_testkit::scheduler::{Events, catalog, compile, plan_on, run_with, tools};

const WORKFLOW: &str = r#"
name: record
steps:
  say:
    tool: echo
    args: { text: "hello" }
  loud:
    value: "{{ steps.say.output | upper }}"
  never:
    when: "{{ false }}"
    value: "no"
outputs:
  loud: "{{ steps.loud.output }}"
policy: { tools: [echo] }
"#;

#[tokio::test]
async fn a_report_reads_back_field_for_field_from_json_and_from_the_store() {
    let catalog = catalog();
    let dag = compile(WORKFLOW, &catalog);
    let plan = plan_on(&dag, "cpu");
    let mut events = Events::default();
    let outcome = run_with(
        Arc::new(tools(&catalog)),
        catalog.clone(),
        dag,
        "cpu",
        serde_json::json!({}),
        &mut [&mut events],
    )
    .await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    let report = Report::new(&plan, &outcome);
    let statuses: Vec<StepStatus> = report.steps.iter().map(|s| s.status).collect();
    assert_eq!(
        statuses,
        [
            StepStatus::Succeeded,
            StepStatus::Succeeded,
            StepStatus::Skipped
        ]
    );
    assert_eq!(report.steps[0].kind, Kind::Tool);
    let back: Report = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
    assert_eq!(back, report);

    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("runs.db")).unwrap();
    store
        .create_run(&NewRun {
            id: "r1",
            workflow: "record",
            file: "w.yaml",
            source: WORKFLOW,
            inputs: &serde_json::json!({}),
            plan: &plan,
            options: &serde_json::json!({"kept": "as written"}),
        })
        .unwrap();
    store.set_report("r1", &report).unwrap();
    let stored = store.run("r1").unwrap();
    assert_eq!(stored.plan, plan);
    assert_eq!(stored.report.as_ref(), Some(&report));
    assert_eq!(stored.options["kept"], "as written");
}

#[test]
fn a_store_written_by_joule_0_1_opens_with_typed_plans_and_reports() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/store-0.1/runs.db");
    // A copy: opening a store may migrate it, and the fixture stays as 0.1 wrote it.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    std::fs::copy(&fixture, &db).unwrap();
    let store = Store::open(&db).unwrap();
    let runs = store.list(10).unwrap();
    assert_eq!(runs.len(), 2);
    let done = store.run("20261201-214244-9391").unwrap();
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(done.plan.steps.len(), 4);
    assert!(done.plan.steps.iter().all(|s| s.kind == Kind::Llm));
    let report = done.report.expect("a finished run has its report");
    assert!(
        report
            .steps
            .iter()
            .all(|s| s.status == StepStatus::Succeeded)
    );
    let killed = store.run("20261201-214247-6d03").unwrap();
    assert_eq!(killed.status, RunStatus::Running, "killed mid-run");
    assert!(killed.report.is_none());
    assert_eq!(store.prior(&killed.id).unwrap().steps.len(), 2);
}
