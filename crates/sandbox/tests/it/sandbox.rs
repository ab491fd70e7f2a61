//! The box's grants: the network only where both the catalog and the policy give it, a layer
//! the policy requires enforced before anything starts, and a tool's ordinary work (files in
//! its working directory, its granted paths, subprocesses) working inside the box.

use std::collections::BTreeMap;
use std::path::Path;

use joule_call::Cancel;
use joule_planner::catalog::Tool;
use joule_sandbox::Layer;
use joule_sandbox::tool::{self, ToolError};

/// A tool that runs `code` with python3; `args` are its declared string arguments, in order.
fn python(code: &str, args: &[&str], limits: serde_json::Value) -> Tool {
    let args: Vec<(String, serde_json::Value)> = args
        .iter()
        .map(|a| (a.to_string(), serde_json::json!({ "type": "string" })))
        .collect();
    crate::python_tool("escape", code, &args, limits)
}

fn limits() -> serde_json::Value {
    serde_json::json!({ "cpu_s": 5, "memory_mb": 512, "processes": 8, "file_mb": 4,
        "output_bytes": 65536, "timeout_s": 20 })
}

#[test]
fn a_tool_granted_network_gets_no_network_layers() {
    let grant = joule_sandbox::isolation::Grant {
        read: Vec::new(),
        network: true,
    };
    let p = joule_sandbox::isolation::prepare(
        &grant,
        Path::new("/bin/true"),
        &[],
        &joule_planner::catalog::ToolLimits::default(),
    )
    .unwrap();
    assert!(!p.layers.contains(&Layer::NetNamespace));
    assert!(!p.layers.contains(&Layer::LandlockNet));
    assert!(p.layers.contains(&Layer::PidNamespace));
}

/// The network is a grant of both the catalog (`network: true`) and the policy; a layer the
/// policy requires but this tool cannot have stops it before it starts.
#[tokio::test]
async fn network_needs_both_grants_and_a_required_layer_is_enforced() {
    let _turn = crate::one_box_at_a_time().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut t = python(
        "import socket, sys\nsocket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5).close()\nprint('connected')",
        &["port"],
        limits(),
    );
    t.network = true;
    let dir = tempfile::tempdir().unwrap();
    let args: BTreeMap<String, String> = [("port".to_string(), port)].into();
    let argv = tool::argv(&t, &args, dir.path()).unwrap();
    let run = |c: tool::Constraints| {
        let (t, argv) = (t.clone(), argv.clone());
        async move { tool::run(&t, &argv, &c, None, &Cancel::new()).await }
    };
    // The catalog allows it, the policy does not: no network.
    assert!(run(tool::Constraints::default()).await.is_err());
    // Both do: it connects (and has no network namespace or Landlock network rules).
    let out = run(tool::Constraints {
        network: true,
        require: Vec::new(),
    })
    .await
    .unwrap();
    assert_eq!(out.stdout.trim(), "connected");
    assert!(!out.layers.contains(&Layer::NetNamespace));
    // A policy that requires the network namespace cannot have it for a networked tool.
    let err = run(tool::Constraints {
        network: true,
        require: vec!["net_namespace".into()],
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, ToolError::Sandbox { ref layer, .. } if layer == "net_namespace"),
        "{err}"
    );
}

/// What tools do for a living still works in the box: files in the working directory, a
/// granted directory read, a subprocess, `/tmp`, the interpreter's standard library.
#[tokio::test]
async fn ordinary_work_runs_in_the_box() {
    let _turn = crate::one_box_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    std::fs::write(docs.join("a.md"), "alpha\n").unwrap();
    let t: Tool = serde_json::from_value(serde_json::json!({
        "name": "work", "program": "python3",
        "argv": ["-I", "-c", "import json, os, subprocess, sys, tempfile\nopen('out.txt', 'w').write('x')\nwith tempfile.NamedTemporaryFile() as f: f.write(b'y')\nprint(open(os.path.join(sys.argv[1], 'a.md')).read().strip(), subprocess.run(['/bin/echo', 'sub'], capture_output=True, text=True).stdout.strip(), os.getcwd(), len(os.listdir('.')))", "{path}"],
        "args": { "path": { "type": "path" } },
    }))
    .unwrap();
    let args: BTreeMap<String, String> = [("path".to_string(), "docs".to_string())].into();
    let argv = tool::argv(&t, &args, dir.path()).unwrap();
    let out = tool::run(
        &t,
        &argv,
        &tool::Constraints::default(),
        None,
        &Cancel::new(),
    )
    .await
    .unwrap();
    assert_eq!(out.stdout.trim(), "alpha sub /work 1", "{out:?}");
    assert!(
        !dir.path().join("out.txt").exists(),
        "the working directory is the box's own"
    );
}
