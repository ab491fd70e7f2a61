//! The sandbox's integration tests, one binary: the escape suite (real tool processes
//! attacking their box, as root and as an unprivileged user) and the box's grants.

mod escape;
mod sandbox;

/// Tests that run boxed tools take turns: the escape suite counts the cgroups this process
/// has left behind, and a tool of another test running at that moment would be counted too.
static BOXES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn one_box_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    BOXES.lock().await
}

/// A tool named `name` that runs `code` with python3 in isolated mode, its declared
/// arguments appended to the command line in order (`{name}` placeholders).
fn python_tool(
    name: &str,
    code: &str,
    args: &[(String, serde_json::Value)],
    limits: serde_json::Value,
) -> joule_planner::catalog::Tool {
    let mut argv = vec![
        serde_json::json!("-I"),
        serde_json::json!("-c"),
        serde_json::json!(code),
    ];
    let mut declared = serde_json::Map::new();
    for (a, kind) in args {
        argv.push(serde_json::json!(format!("{{{a}}}")));
        declared.insert(a.clone(), kind.clone());
    }
    serde_json::from_value(serde_json::json!({
        "name": name,
        "program": "python3",
        "argv": argv,
        "args": declared,
        "limits": limits,
    }))
    .unwrap()
}
