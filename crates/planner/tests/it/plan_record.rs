//! Plans are records: the run store keeps the one a run started with and a resumed run reads
//! it back, so a plan written as JSON must read back field for field, and a plan stored by an
//! earlier joule (no per-step `latency_s`) must still read.

use joule_planner::catalog::Catalog;
use joule_planner::estimate::Environment;
use joule_planner::plan::{self, Method, Plan, Request};
use joule_planner::profile::Profiles;
use joule_planner::solve::Strategy;
use joule_planner::{SourceFile, compile_source};

const WORKFLOW: &str = r#"
name: record
budget: { latency: 2m }
inputs:
  topic: { type: string }
steps:
  outline:
    task: write
    prompt: "Outline {{ inputs.topic }}"
    max_tokens: 64
  draft:
    task: write
    prompt: "Write from {{ steps.outline.output }}"
    max_tokens: 128
  words:
    value: "{{ steps.draft.output | length }}"
outputs:
  words: "{{ steps.words.output }}"
"#;

fn planned(strategy: Strategy) -> Plan {
    let catalog = Catalog::builtin();
    let dag = compile_source(
        &SourceFile::new("record.yaml", WORKFLOW),
        &catalog.compile_context(),
    )
    .unwrap();
    let request = Request {
        strategy,
        ..Request::default()
    };
    plan::plan(
        &dag,
        &catalog,
        &Profiles::reference(),
        &Environment::default(),
        &request,
    )
    .unwrap()
}

#[test]
fn a_plan_reads_back_field_for_field() {
    for strategy in Strategy::ALL {
        let p = planned(strategy);
        assert_eq!(p.method, Method::from(strategy));
        let text = serde_json::to_string(&p).unwrap();
        let back: Plan = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p, "{strategy}");
        assert_eq!(back.to_json(), p.to_json());
    }
}

#[test]
fn a_plan_stored_before_steps_kept_their_latency_still_reads() {
    let p = planned(Strategy::Joule);
    let mut old = p.to_json();
    for s in old["steps"].as_array_mut().unwrap() {
        s.as_object_mut().unwrap().remove("latency_s");
    }
    let back: Plan = serde_json::from_value(old).unwrap();
    for (b, s) in back.steps.iter().zip(&p.steps) {
        assert_eq!(b.latency_s, s.end_s - s.start_s, "{}", s.id);
        assert_eq!((&b.id, b.kind, &b.model), (&s.id, s.kind, &s.model));
    }
}
