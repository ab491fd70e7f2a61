//! API keys come only from the environment variable the catalog names, reach the endpoint in
//! its Authorization header, and appear nowhere joule writes: not in logs, the run store, the
//! trace, the report or the audit log, even when a hostile endpoint echoes the key back. The
//! key is given as a setting (the variable the catalog names), not by changing this test
//! process's environment.

use std::io::Write;
use std::sync::{Arc, Mutex};

use joule_app::{Assembly, Planning, Settings};
use joule_executor::report::Report;
use joule_executor::runtime::{Cancel, Executor, Job, Options, Prior, RunStatus, Sink};
use joule_executor::store::{NewRun, Store};
use joule_executor::trace::Trace;
use joule_planner::SourceFile;
use joule_planner::plan;
use joule_planner::profile::Profiles;
use joule_testkit::{Fault, injector};

const KEY: &str = "sk-joule-test-4f9a1c77e2d04b6d";

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn an_api_key_reaches_the_endpoint_and_nothing_else() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let trace_path = dir.path().join("trace.jsonl");
    let (url, script) = injector(vec![Fault::Stream(&["fine"]), Fault::EchoAuth(401)]).await;
    let key_var = joule_planner::catalog::Catalog::builtin()
        .endpoint("lan-joule")
        .expect("the built-in catalog has lan-joule")
        .api_key_env
        .clone();
    let settings = Settings::from_vars([
        (key_var, KEY.to_string()),
        ("JOULE_HOME".into(), dir.path().display().to_string()),
    ])
    .unwrap();
    let assembly = Assembly::new(
        settings,
        Planning::default(),
        vec![format!("lan-joule={url}").parse().unwrap()],
    )
    .unwrap();
    let catalog = (*assembly.catalog).clone();
    let dag = joule_planner::compile_source(
        &SourceFile::new(
            "w.yaml",
            "name: keyed\npolicy: { providers: [lan-joule] }\nsteps:\n  ask:\n    prompt: hi\n    max_tokens: 4\noutputs:\n  a: \"{{ steps.ask.output }}\"\n",
        ),
        &catalog.compile_context(),
    )
    .unwrap();
    let mut plan = plan::empty(&dag.workflow);
    plan.steps[0].model = Some("smollm2-135m".into());
    plan.steps[0].device = "lan-joule".into();

    let backend = Arc::new(
        assembly
            .router(&[], dir.path(), &["lan-joule"].into())
            .unwrap(),
    );
    let mut store = Store::open(&db).unwrap();
    let mut trace = Trace::create(&trace_path).unwrap();
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    for run in ["ok", "echoed"] {
        store
            .create_run(&NewRun {
                id: run,
                workflow: "keyed",
                file: "w.yaml",
                source: "",
                inputs: &serde_json::json!({}),
                plan: &plan,
                options: &serde_json::json!({}),
            })
            .unwrap();
        let executor = Executor::new(
            backend.clone(),
            Arc::new(catalog.clone()),
            Arc::new(Profiles::reference()),
            Options {
                no_backoff: true,
                ..Options::default()
            },
        );
        let job = Job {
            run_id: run.into(),
            dag: Arc::new(dag.clone()),
            plan: plan.clone(),
            problem: None,
            inputs: Default::default(),
            prior: Prior::default(),
        };
        let mut sinks: [&mut dyn Sink; 2] = [&mut store, &mut trace];
        let out = executor.run(job, &mut sinks, &Cancel::new()).await.unwrap();
        reports.push(Report::new(&plan, &out).to_json().to_string());
        errors.push(out.error.clone().unwrap_or_default());
        if run == "ok" {
            assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
        } else {
            assert_eq!(out.status, RunStatus::Failed);
        }
    }
    // The key went where it belongs...
    let auth = script.lock().unwrap().auth.clone();
    assert!(
        !auth.is_empty() && auth.iter().all(|a| *a == format!("Bearer {KEY}")),
        "{auth:?}"
    );
    // ...the hostile echo was blanked out of the error...
    assert!(errors[1].contains("[redacted]"), "{}", errors[1]);
    // ...and it is nowhere joule wrote.
    let audit: Vec<String> = ["ok", "echoed"]
        .iter()
        .map(|run| {
            let (rows, _) = store.audit(run).unwrap();
            serde_json::to_string(
                &rows
                    .iter()
                    .map(joule_executor::audit::entry)
                    .collect::<Vec<_>>(),
            )
            .unwrap()
        })
        .collect();
    drop(store);
    let mut written: Vec<(String, Vec<u8>)> = vec![
        ("logs".into(), logs.0.lock().unwrap().clone()),
        ("trace".into(), std::fs::read(&trace_path).unwrap()),
        ("reports".into(), reports.join("\n").into_bytes()),
        ("errors".into(), errors.join("\n").into_bytes()),
        ("audit".into(), audit.join("\n").into_bytes()),
    ];
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("runs.db")
        {
            written.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    assert!(
        written
            .iter()
            .any(|(_, b)| String::from_utf8_lossy(b).contains("attempt_ended"))
    );
    for (what, bytes) in &written {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains(KEY), "the key leaked into {what}");
        assert!(
            !text.contains(&KEY[3..]),
            "part of the key leaked into {what}"
        );
    }
}
