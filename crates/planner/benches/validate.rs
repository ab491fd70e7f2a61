//! How long `joule validate` takes on large generated workflows (parse + compile), the cost a
//! user pays on every validate, plan and run. Target: under 100 ms at 1,000 steps.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use joule_planner::{CompileContext, SourceFile, synth};

fn validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate");
    group.sample_size(20);
    for steps in [100usize, 1_000] {
        let text = synth::layered_workflow(steps, 10, 7);
        group.bench_with_input(BenchmarkId::from_parameter(steps), &text, |b, text| {
            b.iter(|| {
                let file = SourceFile::new("synthetic.yaml", text.as_str());
                let dag = joule_planner::compile_source(&file, &CompileContext::default())
                    .expect("synthetic workflow is valid");
                assert_eq!(dag.workflow.steps.len(), steps);
                dag
            })
        });
    }
    group.finish();
}

criterion_group!(benches, validate);
criterion_main!(benches);
