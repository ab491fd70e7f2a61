//! The executor's own overhead: 1,000 `value` steps (template work only, no model), as a chain
//! and as 10 layers of 100 (each step reads two of the layer before), run in memory and with
//! the SQLite run store. Targets (issue 5): under 10 ms in memory (10 us a step) and under
//! 100 ms with the store. Compiling and planning are not included: they have their own
//! benchmarks (`validate`, `solve`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use joule_executor::router::Router;
use joule_executor::runtime::{Cancel, Executor, Job, Options, Prior, RunStatus, Sink};
use joule_executor::store::{NewRun, Store};
use joule_planner::catalog::Catalog;
use joule_planner::plan;
use joule_planner::profile::Profiles;
use joule_planner::{Dag, SourceFile};

/// `s0 .. s999`, each one more than the one before.
fn chain(n: usize) -> String {
    let mut y = String::from("name: chain\nsteps:\n  s0:\n    value: \"{{ 0 }}\"\n");
    for i in 1..n {
        y.push_str(&format!(
            "  s{i}:\n    value: \"{{{{ steps.s{}.output + 1 }}}}\"\n",
            i - 1
        ));
    }
    y
}

/// `layers` layers of `width`; step (k, j) adds two steps of layer k - 1.
fn layers(layers: usize, width: usize) -> String {
    let mut y = String::from("name: layers\nsteps:\n");
    for j in 0..width {
        y.push_str(&format!("  l0_{j}:\n    value: \"{{{{ {j} }}}}\"\n"));
    }
    for k in 1..layers {
        for j in 0..width {
            y.push_str(&format!(
                "  l{k}_{j}:\n    value: \"{{{{ steps.l{p}_{j}.output + steps.l{p}_{q}.output }}}}\"\n",
                p = k - 1,
                q = (j + 1) % width
            ));
        }
    }
    y
}

fn compile(yaml: &str, catalog: &Catalog) -> Arc<Dag> {
    Arc::new(
        joule_planner::compile_source(
            &SourceFile::new("bench.yaml", yaml),
            &catalog.compile_context(),
        )
        .expect("the generated workflow compiles"),
    )
}

fn overhead(c: &mut Criterion) {
    let catalog = Arc::new(Catalog::builtin());
    let executor = Executor::new(
        Arc::new(Router::new()),
        catalog.clone(),
        Arc::new(Profiles::reference()),
        Options::default(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("runs.db")).unwrap();
    let counter = AtomicU64::new(0);
    let mut group = c.benchmark_group("executor_1000_value_steps");
    group.sample_size(20);
    for (name, yaml) in [("chain", chain(1000)), ("10x100", layers(10, 100))] {
        let dag = compile(&yaml, &catalog);
        let plan = plan::empty(&dag.workflow);
        let job = |id: String| Job {
            run_id: id,
            dag: dag.clone(),
            plan: plan.clone(),
            problem: None,
            inputs: Default::default(),
            prior: Prior::default(),
        };
        group.bench_function(BenchmarkId::new("in_memory", name), |b| {
            b.iter(|| {
                let out = runtime
                    .block_on(executor.run(job("mem".into()), &mut [], &Cancel::new()))
                    .unwrap();
                assert_eq!(out.status, RunStatus::Succeeded);
            })
        });
        group.bench_function(BenchmarkId::new("sqlite_store", name), |b| {
            b.iter(|| {
                let id = format!("bench-{}", counter.fetch_add(1, Ordering::Relaxed));
                store
                    .create_run(&NewRun {
                        id: &id,
                        workflow: name,
                        file: "bench.yaml",
                        source: &yaml,
                        inputs: &serde_json::json!({}),
                        plan: &plan,
                        options: &serde_json::json!({}),
                    })
                    .unwrap();
                let mut sinks: [&mut dyn Sink; 1] = [&mut store];
                let out = runtime
                    .block_on(executor.run(job(id), &mut sinks, &Cancel::new()))
                    .unwrap();
                assert_eq!(out.status, RunStatus::Succeeded);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
