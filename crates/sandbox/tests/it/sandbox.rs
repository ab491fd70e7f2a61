//! The escape suite: each attempt runs as a real tool process (python3) in the sandbox and
//! must be stopped, by the layer the table names. Prints the table (run with
//! `--nocapture` to see it).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use joule_call::Cancel;
use joule_planner::catalog::Tool;
use joule_sandbox::Layer;
use joule_sandbox::tool::{self, ToolError, ToolOutput};

/// A tool that runs `code` with python3; `args` are its declared string arguments, in order.
fn python(code: &str, args: &[&str], limits: serde_json::Value) -> Tool {
    let mut argv = vec![
        serde_json::json!("-I"),
        serde_json::json!("-c"),
        serde_json::json!(code),
    ];
    let mut declared = serde_json::Map::new();
    for a in args {
        argv.push(serde_json::json!(format!("{{{a}}}")));
        declared.insert((*a).into(), serde_json::json!({ "type": "string" }));
    }
    serde_json::from_value(serde_json::json!({
        "name": "escape",
        "program": "python3",
        "argv": argv,
        "args": declared,
        "limits": limits,
    }))
    .unwrap()
}

async fn attempt(
    t: &Tool,
    args: &[(&str, &str)],
    workspace: &Path,
) -> Result<ToolOutput, ToolError> {
    let args: BTreeMap<String, String> = args
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let argv = tool::argv(t, &args, workspace)?;
    tool::run(
        t,
        &argv,
        &tool::Constraints::default(),
        None,
        &Cancel::new(),
    )
    .await
}

fn limits() -> serde_json::Value {
    serde_json::json!({ "cpu_s": 5, "memory_mb": 512, "processes": 8, "file_mb": 4,
        "output_bytes": 65536, "timeout_s": 20 })
}

struct Row {
    attempt: &'static str,
    layer: &'static str,
    result: String,
}

/// Processes whose command line contains `marker` and that are not yet reaped zombies.
fn alive_with(marker: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'));
            !zombie && String::from_utf8_lossy(&cmd).contains(marker)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_escape_attempt_is_stopped_and_the_suite_prints_its_table() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, "TOPSECRET-4815162342").unwrap();
    let workspace = tempfile::tempdir().unwrap();
    std::fs::create_dir(workspace.path().join("docs")).unwrap();
    let secret_s = secret.to_str().unwrap();
    let mut rows = Vec::new();

    // What every sandbox here has: the test states which layers it relies on below.
    let probe = attempt(&python("print('ok')", &[], limits()), &[], workspace.path())
        .await
        .expect("python3 runs in the sandbox");
    let layers = probe.layers.clone();
    for l in [
        Layer::EmptyEnv,
        Layer::Rlimits,
        Layer::LandlockFs,
        Layer::Seccomp,
    ] {
        assert!(layers.contains(&l), "{l:?} missing from {layers:?}");
    }

    // 1. Write outside the working directory.
    let target = outside.path().join("written.txt");
    let r = attempt(
        &python(
            "open(__import__('sys').argv[1], 'w').write('x')",
            &["p"],
            limits(),
        ),
        &[("p", target.to_str().unwrap())],
        workspace.path(),
    )
    .await;
    assert!(r.is_err() && !target.exists(), "{r:?}");
    rows.push(Row {
        attempt: "write outside the working directory",
        layer: "landlock_fs",
        result: short(&r),
    });

    // 2. Read a file outside the declared paths.
    let r = attempt(
        &python(
            "print(open(__import__('sys').argv[1]).read())",
            &["p"],
            limits(),
        ),
        &[("p", secret_s)],
        workspace.path(),
    )
    .await;
    assert!(!leaks(&r, "TOPSECRET"), "{r:?}");
    assert!(r.is_err());
    rows.push(Row {
        attempt: "read a file outside the declared paths",
        layer: "landlock_fs",
        result: short(&r),
    });

    // 3. Follow a symlink out of the working directory.
    let r = attempt(
        &python(
            "import os, sys\nos.symlink(sys.argv[1], 'link')\nprint(open('link').read())",
            &["p"],
            limits(),
        ),
        &[("p", secret_s)],
        workspace.path(),
    )
    .await;
    assert!(r.is_err() && !leaks(&r, "TOPSECRET"), "{r:?}");
    rows.push(Row {
        attempt: "follow a symlink out of the working directory",
        layer: "landlock_fs",
        result: short(&r),
    });

    // 4. Open a TCP connection to a listener on 127.0.0.1.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let r = attempt(
        &python(
            "import socket, sys\nsocket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3).send(b'hi')",
            &["port"],
            limits(),
        ),
        &[("port", &port)],
        workspace.path(),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "nothing connected"
    );
    rows.push(Row {
        attempt: "TCP connection to a listener on 127.0.0.1",
        layer: "seccomp (and net_namespace, landlock_net behind it)",
        result: short(&r),
    });

    // 5. A fork bomb: every process forks as fast as it can.
    let capped = layers.contains(&Layer::Cgroup)
        // RLIMIT_NPROC binds every user but root.
        || unsafe { libc::geteuid() } != 0;
    assert!(capped, "no process cap is in force here: {layers:?}");
    let r = attempt(
        &python(
            "import os, time\nn = 0\nwhile n < 10000:\n    try:\n        if os.fork() == 0:\n            n = 0\n            continue\n        n += 1\n    except OSError:\n        break\nprint(n)\ntime.sleep(0.5)",
            &[],
            limits(),
        ),
        &[],
        workspace.path(),
    )
    .await;
    // The first process reports how many children it made before forks were refused.
    let made: u32 = r.as_ref().map_or(0, |o| {
        o.stdout
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .max()
            .unwrap_or(0)
    });
    assert!(made < 8, "{made} forks from one process: {r:?}");
    rows.push(Row {
        attempt: "fork bomb",
        layer: if layers.contains(&Layer::Cgroup) {
            "cgroup (pids.max)"
        } else {
            "rlimits (RLIMIT_NPROC)"
        },
        result: format!("forks refused after {made} from the first process"),
    });

    // 6. Allocate past the memory limit.
    let mut small = limits();
    small["memory_mb"] = 256.into();
    let r = attempt(
        &python("b = bytearray(1024 ** 3)\nprint(len(b))", &[], small),
        &[],
        workspace.path(),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    rows.push(Row {
        attempt: "allocate past the memory limit",
        layer: "rlimits (RLIMIT_AS)",
        result: short(&r),
    });

    // 7. Spin past the CPU limit.
    let mut cpu = limits();
    cpu["cpu_s"] = 1.into();
    let r = attempt(&python("while True: pass", &[], cpu), &[], workspace.path()).await;
    assert!(
        matches!(&r, Err(ToolError::Exit { status, .. }) if status.contains("signal")),
        "{r:?}"
    );
    rows.push(Row {
        attempt: "spin past the CPU limit",
        layer: "rlimits (RLIMIT_CPU)",
        result: short(&r),
    });

    // 8. Outlive its timeout through a grandchild that leaves the process group.
    let marker = format!("joule-escape-{}", std::process::id());
    let mut quick = limits();
    quick["timeout_s"] = 1.into();
    let r = attempt(
        &python(
            "import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(120)\n        os._exit(0)\n    os._exit(0)\ntime.sleep(120)",
            &["marker"],
            quick,
        ),
        &[("marker", &marker)],
        workspace.path(),
    )
    .await;
    assert!(matches!(r, Err(ToolError::Timeout { .. })), "{r:?}");
    let survivors = alive_with(&marker);
    assert!(
        survivors.is_empty() || !layers.contains(&Layer::Cgroup),
        "still running: {survivors:?}"
    );
    rows.push(Row {
        attempt: "outlive its timeout through a grandchild (setsid)",
        layer: "cgroup (every process killed)",
        result: format!("{}; {} survivors", short(&r), survivors.len()),
    });

    // 9. Read the parent's environment: an API key.
    // SAFETY: this test binary sets the variable before any tool starts and never reads it
    // concurrently from another thread.
    unsafe { std::env::set_var("JOULE_ESCAPE_API_KEY", "sk-escape-0123456789") };
    let r = attempt(
        &python(
            "import os\nprint(dict(os.environ))\ntry:\n    print(open('/proc/%d/environ' % os.getppid(), 'rb').read())\nexcept OSError as e:\n    print('refused', e)",
            &[],
            limits(),
        ),
        &[],
        workspace.path(),
    )
    .await;
    assert!(!leaks(&r, "sk-escape-0123456789"), "{r:?}");
    rows.push(Row {
        attempt: "read the parent's environment (an API key)",
        layer: "empty_env, landlock_fs (/proc)",
        result: short(&r),
    });

    // 10. Path traversal through a model-produced argument.
    let t: Tool = serde_json::from_value(serde_json::json!({
        "name": "cat", "program": "cat", "argv": ["{path}"],
        "args": { "path": { "type": "path" } },
    }))
    .unwrap();
    let r = attempt(
        &t,
        &[("path", "docs/../../../../etc/passwd")],
        workspace.path(),
    )
    .await;
    assert!(matches!(r, Err(ToolError::Arguments { .. })), "{r:?}");
    rows.push(Row {
        attempt: "path traversal through a model-produced argument",
        layer: "argument check (before start)",
        result: short(&r),
    });

    let mut table = String::from("\n| attempt | stopped by | result |\n| --- | --- | --- |\n");
    for row in &rows {
        table.push_str(&format!(
            "| {} | {} | {} |\n",
            row.attempt, row.layer, row.result
        ));
    }
    table.push_str(&format!("\nlayers in force: {layers:?}\n"));
    std::io::stdout().write_all(table.as_bytes()).unwrap();
}

fn leaks(r: &Result<ToolOutput, ToolError>, secret: &str) -> bool {
    match r {
        Ok(o) => o.stdout.contains(secret) || o.stderr.contains(secret),
        Err(e) => e.to_string().contains(secret),
    }
}

fn short(r: &Result<ToolOutput, ToolError>) -> String {
    let text = match r {
        Ok(o) => format!("exit {}: {}", o.exit_code, o.stdout.trim()),
        Err(e) => e.to_string(),
    };
    let line = text.lines().last().unwrap_or("").replace('|', "/");
    line.chars().take(90).collect()
}

#[test]
fn a_tool_granted_network_gets_no_network_layers() {
    let grant = joule_sandbox::isolation::Grant {
        read: Vec::new(),
        network: true,
    };
    let dir = tempfile::tempdir().unwrap();
    let p = joule_sandbox::isolation::prepare(&grant, dir.path(), Path::new("/bin/true"), 4);
    assert!(!p.layers.contains(&Layer::NetNamespace));
    assert!(!p.layers.contains(&Layer::LandlockNet));
}

/// The network is a grant of both the catalog (`network: true`) and the policy; a layer the
/// policy requires but this tool cannot have stops it before it starts.
#[tokio::test]
async fn network_needs_both_grants_and_a_required_layer_is_enforced() {
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
