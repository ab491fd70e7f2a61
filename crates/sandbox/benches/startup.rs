//! What the box costs a tool step: `/bin/true` run through the sandbox (bubblewrap, the
//! namespaces, the cgroup where there is one, seccomp, the inner-walls helper and Landlock)
//! against the same program spawned bare. `cargo bench -p joule-sandbox --bench startup`.

use std::collections::BTreeMap;

use criterion::{Criterion, criterion_group, criterion_main};
use joule_call::Cancel;
use joule_planner::catalog::Tool;
use joule_sandbox::tool;

fn startup(c: &mut Criterion) {
    let t: Tool = serde_json::from_value(serde_json::json!({
        "name": "true", "program": "/bin/true",
    }))
    .unwrap();
    let argv = tool::argv(&t, &BTreeMap::new(), std::path::Path::new("/")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let boxed = || {
        runtime
            .block_on(tool::run(
                &t,
                &argv,
                &tool::Constraints::default(),
                None,
                &Cancel::new(),
            ))
            .unwrap()
    };
    let layers = boxed().layers;
    eprintln!("layers: {layers:?}");
    let mut group = c.benchmark_group("tool_startup");
    group.sample_size(30);
    group.bench_function("boxed", |b| b.iter(boxed));
    group.bench_function("bare", |b| {
        b.iter(|| std::process::Command::new("/bin/true").status().unwrap())
    });
    group.finish();
}

criterion_group!(benches, startup);
criterion_main!(benches);
