//! The `tool` backend: a catalog program run as a child process inside the sandbox.
//!
//! A workflow only names a tool and gives its arguments; the catalog says which program runs
//! and how the arguments become its argv. The process gets an empty environment, a fresh
//! box of [`crate::isolation`] (its own namespaces, a fresh size-limited working directory,
//! resource limits, a cgroup, seccomp and Landlock), killed whole when the wall-clock limit
//! passes, its output passes its limits, or the run is cancelled. No argument ever passes
//! through a shell.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use std::sync::Arc;

use joule_call::{Answer, Backend, Call, CallError, CallFuture, Cancel, Layer, OnTokens, Site};
use joule_planner::catalog::{Catalog, Tool, ToolArgType};
use tokio::io::AsyncReadExt;

use crate::isolation::{self as sandbox, Grant};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("tool `{tool}`: {message}")]
    Arguments { tool: String, message: String },
    #[error("tool `{tool}`: cannot start `{program}`: {message}")]
    Spawn {
        tool: String,
        program: String,
        message: String,
    },
    #[error("tool `{tool}` exited with {status}: {stderr}")]
    Exit {
        tool: String,
        status: String,
        stderr: String,
    },
    #[error("tool `{tool}` ran past its {seconds:.1} s limit and was killed")]
    Timeout { tool: String, seconds: f64 },
    #[error("tool `{tool}` wrote more than {limit} {what} and was stopped")]
    TooMuchOutput {
        tool: String,
        limit: usize,
        /// `bytes of output`, `lines of output` or `bytes of error output`.
        what: &'static str,
    },
    #[error("tool `{tool}` was killed for using more than its {limit_mb} MB of memory")]
    Memory { tool: String, limit_mb: u64 },
    #[error("tool `{tool}` was cancelled")]
    Cancelled { tool: String },
    #[error("tool `{tool}`: {message}")]
    Io { tool: String, message: String },
    #[error(
        "tool `{tool}` was not started: the policy requires the `{layer}` sandbox layer, which is absent here ({why})"
    )]
    Sandbox {
        tool: String,
        layer: String,
        why: String,
    },
    #[error("tool `{tool}` was not started: {why}")]
    NoBox { tool: String, why: String },
}

impl ToolError {
    /// Whether running the same call again may succeed (bad arguments never will).
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            Self::Arguments { .. } | Self::Spawn { .. } | Self::Sandbox { .. } | Self::NoBox { .. }
        )
    }
}

/// What a tool process did.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    pub wall_s: f64,
    /// CPU seconds the process and its children used (user + system).
    pub cpu_s: f64,
    /// The sandbox layers that were in force.
    pub layers: Vec<Layer>,
}

/// A tool's command line, and the paths its `path` arguments name (the sandbox lets the
/// process read those, and nothing else of the workflow's directory).
#[derive(Debug, Clone)]
pub struct Argv {
    pub argv: Vec<String>,
    pub paths: Vec<PathBuf>,
}

/// Turns a step's arguments into the argv of the catalog's tool, checking each against its
/// declaration. `workspace` is the directory `path` arguments are resolved in.
pub fn argv(
    tool: &Tool,
    args: &BTreeMap<String, String>,
    workspace: &Path,
) -> Result<Argv, ToolError> {
    let bad = |message: String| ToolError::Arguments {
        tool: tool.name.clone(),
        message,
    };
    for name in args.keys() {
        if !tool.args.contains_key(name) {
            let known: Vec<&str> = tool.args.keys().map(String::as_str).collect();
            return Err(bad(format!(
                "unknown argument `{name}`; it takes: {}",
                known.join(", ")
            )));
        }
    }
    let mut values = BTreeMap::new();
    let mut paths = Vec::new();
    for (name, decl) in &tool.args {
        let Some(value) = args.get(name) else {
            if decl.required {
                return Err(bad(format!("argument `{name}` is required")));
            }
            continue;
        };
        if value.len() > decl.max_bytes {
            return Err(bad(format!(
                "argument `{name}` is {} bytes, more than its limit of {}",
                value.len(),
                decl.max_bytes
            )));
        }
        if value.contains('\0') {
            return Err(bad(format!("argument `{name}` contains a NUL byte")));
        }
        let value = match decl.ty {
            ToolArgType::String => value.clone(),
            ToolArgType::Integer => {
                value
                    .trim()
                    .parse::<i64>()
                    .map(|v| v.to_string())
                    .map_err(|_| {
                        bad(format!(
                            "argument `{name}` must be an integer, got `{value}`"
                        ))
                    })?
            }
            ToolArgType::Number => value
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(|v| v.to_string())
                .ok_or_else(|| bad(format!("argument `{name}` must be a number, got `{value}`")))?,
            ToolArgType::Boolean => match value.trim() {
                "true" | "false" => value.trim().to_string(),
                _ => return Err(bad(format!("argument `{name}` must be true or false"))),
            },
            ToolArgType::Path => {
                let path = contained(workspace, value)
                    .map_err(|m| bad(format!("argument `{name}`: {m}")))?;
                let text = path.to_string_lossy().into_owned();
                paths.push(path);
                text
            }
        };
        values.insert(name.as_str(), value);
    }
    let mut out = Vec::with_capacity(tool.argv.len());
    for element in &tool.argv {
        match element.strip_prefix('{').and_then(|e| e.strip_suffix('}')) {
            Some(name) if tool.args.contains_key(name) => {
                if let Some(v) = values.get(name) {
                    out.push(v.clone());
                }
            }
            _ => out.push(element.clone()),
        }
    }
    Ok(Argv { argv: out, paths })
}

/// Resolves `path` inside `root`, refusing anything that ends up outside it.
///
/// The path is judged by its words first: an absolute path, or one whose `..` climb above
/// the root, is refused before the filesystem is asked anything, so an agent cannot learn
/// which host paths exist from the error. What stays inside lexically is then resolved,
/// and a symlink leading out is refused too.
fn contained(root: &Path, path: &str) -> Result<PathBuf, String> {
    let outside = || {
        format!(
            "`{path}` leads outside the workflow's directory {}",
            root.display()
        )
    };
    let mut depth = 0usize;
    for component in Path::new(path).components() {
        match component {
            std::path::Component::Normal(_) => depth += 1,
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => depth = depth.checked_sub(1).ok_or_else(outside)?,
            std::path::Component::RootDir | std::path::Component::Prefix(_) => {
                return Err(outside());
            }
        }
    }
    let root = root
        .canonicalize()
        .map_err(|e| format!("the workflow directory {}: {e}", root.display()))?;
    let resolved = root
        .join(path)
        .canonicalize()
        .map_err(|e| format!("`{path}` does not exist in {}: {e}", root.display()))?;
    if resolved.starts_with(&root) {
        Ok(resolved)
    } else {
        Err(outside())
    }
}

/// Finds a program by name in `PATH`, as joule itself was started with; the child's own
/// environment stays empty.
fn resolve_program(program: &str) -> Option<PathBuf> {
    let p = Path::new(program);
    if p.is_absolute() {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|c| c.is_file())
    })
}

/// What the workflow's policy adds to the catalog's declaration of a tool.
#[derive(Debug, Clone, Default)]
pub struct Constraints {
    /// The policy grants the network (it is used only where the catalog allows it too).
    pub network: bool,
    /// Sandbox layers that must be in force (`Layer::as_str` names).
    pub require: Vec<String>,
}

/// Runs one tool call to completion in its box, within `timeout` (or the tool's own limit).
/// Output past its limits stops the tool at once (a flood is an output error, not a timeout).
pub async fn run(
    tool: &Tool,
    argv: &Argv,
    constraints: &Constraints,
    timeout: Option<Duration>,
    cancel: &Cancel,
) -> Result<ToolOutput, ToolError> {
    let name = tool.name.clone();
    let io = |e: std::io::Error| ToolError::Io {
        tool: name.clone(),
        message: e.to_string(),
    };
    let program = resolve_program(&tool.program).ok_or_else(|| ToolError::Spawn {
        tool: tool.name.clone(),
        program: tool.program.clone(),
        message: "not found (give an absolute path in the catalog, or put it on PATH)".into(),
    })?;
    let limits = tool.limits;
    let grant = Grant {
        read: tool
            .read
            .iter()
            .map(PathBuf::from)
            .chain(argv.paths.iter().cloned())
            .collect(),
        network: tool.network && constraints.network,
    };
    let sandbox = std::sync::Arc::new(
        sandbox::prepare(&grant, &program, &argv.argv, &limits).map_err(|why| {
            ToolError::NoBox {
                tool: tool.name.clone(),
                why,
            }
        })?,
    );
    let layers = sandbox.layers.clone();
    for need in &constraints.require {
        if !layers.iter().any(|l| l.as_str() == need) {
            let why = sandbox
                .absent
                .iter()
                .find(|(l, _)| l.as_str() == need)
                .map_or("not provided for this tool".to_string(), |(_, w)| w.clone());
            return Err(ToolError::Sandbox {
                tool: tool.name.clone(),
                layer: need.clone(),
                why,
            });
        }
    }
    let in_child = sandbox.clone();
    let mut command = tokio::process::Command::new(&sandbox.program);
    command
        .args(&sandbox.args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: the closure runs in the child between fork and exec and only makes system calls
    // (cgroup join, setsid, setrlimit, close_range, fcntl, prctl, setresuid) on values
    // prepared in the parent; it allocates nothing.
    unsafe {
        command.pre_exec(move || sandbox::enter(&in_child));
    }
    let started = Instant::now();
    let cpu_before = children_cpu_s();
    let mut child = command.spawn().map_err(|e| ToolError::Spawn {
        tool: tool.name.clone(),
        program: sandbox.program.display().to_string(),
        message: e.to_string(),
    })?;
    let pgid = child.id().map(|p| p as i32);
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    // Both pipes at once (a tool blocked on a full stderr pipe would otherwise never close
    // stdout), each bounded: past a limit the tool is stopped, not waited for.
    let pipes = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (mut a, mut b) = ([0u8; 8192], [0u8; 8192]);
        let (mut out_done, mut err_done) = (false, false);
        let (mut lines, mut err_total) = (0usize, 0usize);
        while !(out_done && err_done) {
            tokio::select! {
                r = stdout.read(&mut a), if !out_done => {
                    let n = r?;
                    if n == 0 {
                        out_done = true;
                        continue;
                    }
                    lines += a[..n].iter().filter(|&&c| c == b'\n').count();
                    out.extend_from_slice(&a[..n]);
                    if out.len() > limits.output_bytes {
                        return Ok(Err((limits.output_bytes, "bytes of output")));
                    }
                    if lines > limits.output_lines {
                        return Ok(Err((limits.output_lines, "lines of output")));
                    }
                }
                r = stderr.read(&mut b), if !err_done => {
                    let n = r?;
                    if n == 0 {
                        err_done = true;
                        continue;
                    }
                    err_total += n;
                    let room = (16 * 1024usize).saturating_sub(err.len());
                    err.extend_from_slice(&b[..n.min(room)]);
                    if err_total > limits.output_bytes {
                        return Ok(Err((limits.output_bytes, "bytes of error output")));
                    }
                }
            }
        }
        std::io::Result::Ok(Ok((out, err)))
    };
    let wall = timeout.unwrap_or(Duration::from_secs_f64(limits.timeout_s.max(0.001)));
    let kill_group = || {
        if let Some(pgid) = pgid {
            // SAFETY: signals bubblewrap's own process group, created by its `setsid`; the
            // box's init dies with bubblewrap (`--die-with-parent`) and takes the box along.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        sandbox.kill_all();
    };
    let work = async {
        match pipes.await {
            Ok(Err(over)) => {
                kill_group();
                Err(over)
            }
            Ok(Ok((out, err))) => Ok((Ok(out), Ok(err), child.wait().await)),
            Err(e) => Ok((Err(e), Ok(Vec::new()), child.wait().await)),
        }
    };
    let (out, err, status) = tokio::select! {
        r = tokio::time::timeout(wall, work) => match r {
            Ok(Ok(r)) => r,
            Ok(Err((limit, what))) => {
                return Err(ToolError::TooMuchOutput { tool: tool.name.clone(), limit, what });
            }
            Err(_) => {
                kill_group();
                return Err(ToolError::Timeout { tool: tool.name.clone(), seconds: wall.as_secs_f64() });
            }
        },
        _ = cancel.cancelled() => {
            kill_group();
            return Err(ToolError::Cancelled { tool: tool.name.clone() });
        }
    };
    // Whatever the tool left behind goes with it.
    kill_group();
    let (out, err, status) = (out.map_err(io)?, err.map_err(io)?, status.map_err(io)?);
    let stderr = String::from_utf8_lossy(&err).trim().to_string();
    if sandbox.oom_killed() {
        return Err(ToolError::Memory {
            tool: tool.name.clone(),
            limit_mb: limits.memory_mb,
        });
    }
    // bubblewrap reports a command killed by signal N as exit code 128 + N.
    let signal = match status.code() {
        Some(c) if (129..=128 + 64).contains(&c) => Some(c - 128),
        Some(_) => None,
        None => Some(status.signal().unwrap_or(0)),
    };
    let code = match (status.code(), signal) {
        (Some(c), None) => c,
        (_, signal) => {
            let signal = signal.unwrap_or(0);
            let hint = match signal {
                libc::SIGXCPU => " (its CPU-time limit)",
                libc::SIGXFSZ => " (its file-size limit)",
                libc::SIGKILL => " (killed)",
                _ => "",
            };
            return Err(ToolError::Exit {
                tool: tool.name.clone(),
                status: format!("signal {signal}{hint}"),
                stderr,
            });
        }
    };
    if !tool.ok_exit.contains(&code) {
        return Err(ToolError::Exit {
            tool: tool.name.clone(),
            status: format!("exit code {code}"),
            stderr: if stderr.is_empty() {
                "(no error output)".into()
            } else {
                stderr
            },
        });
    }
    Ok(ToolOutput {
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr,
        exit_code: code,
        wall_s: started.elapsed().as_secs_f64(),
        cpu_s: (children_cpu_s() - cpu_before).max(0.0),
        layers,
    })
}

fn children_cpu_s() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct on success; on failure we report 0.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) } != 0 {
        return 0.0;
    }
    // SAFETY: rc was 0.
    let u = unsafe { usage.assume_init() };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

/// Answers the scheduler's tool calls: the catalog says which program a tool is, and `path`
/// arguments are resolved inside the workflow's directory.
pub struct ToolBackend {
    catalog: Arc<Catalog>,
    workspace: PathBuf,
}

impl ToolBackend {
    pub fn new(catalog: Arc<Catalog>, workspace: PathBuf) -> Self {
        Self { catalog, workspace }
    }

    async fn run_call(&self, call: &Call, cancel: &Cancel) -> Result<Answer, CallError> {
        let Call::Tool(c) = call else {
            return Err(CallError::permanent(
                "the tool backend was handed a model call",
            ));
        };
        let tool = self.catalog.tool(&c.tool).ok_or_else(|| {
            CallError::permanent(format!("tool `{}` is not in the catalog", c.tool))
        })?;
        let argv = argv(tool, &c.args, &self.workspace)
            .map_err(|e| CallError::permanent(e.to_string()))?;
        let out = run(
            tool,
            &argv,
            &Constraints {
                network: c.network,
                require: c.sandbox.clone(),
            },
            c.timeout_s.map(Duration::from_secs_f64),
            cancel,
        )
        .await
        .map_err(|e| CallError {
            transient: e.is_transient(),
            message: e.to_string(),
        })?;
        Ok(Answer {
            text: out.stdout,
            cpu_s: Some(out.cpu_s),
            sandbox: out.layers,
            command: std::iter::once(tool.program.clone())
                .chain(argv.argv.iter().cloned())
                .collect(),
            exit_code: Some(out.exit_code),
            ..Answer::default()
        })
    }
}

impl Backend for ToolBackend {
    fn call<'a>(
        &'a self,
        _site: &'a Site,
        call: &'a Call,
        cancel: &'a Cancel,
        _on_tokens: &'a OnTokens,
    ) -> CallFuture<'a> {
        Box::pin(self.run_call(call, cancel))
    }
}

#[cfg(test)]
mod tests {
    use super::contained;

    #[test]
    fn a_path_is_refused_by_its_words_before_the_filesystem_is_asked() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        std::fs::write(root.path().join("sub/file"), "x").unwrap();
        for path in [
            "/etc",
            "..",
            "sub/../../no-such-host-path",
            "../../../../etc",
        ] {
            let error = contained(root.path(), path).unwrap_err();
            assert!(error.contains("leads outside"), "{path}: {error}");
        }
        let inside = contained(root.path(), "sub/../sub/./file").unwrap();
        assert!(inside.ends_with("sub/file"), "{}", inside.display());
        let missing = contained(root.path(), "sub/absent").unwrap_err();
        assert!(missing.contains("does not exist"), "{missing}");
    }

    #[test]
    fn a_symlink_that_leads_out_is_refused() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("door")).unwrap();
        let error = contained(root.path(), "door").unwrap_err();
        assert!(error.contains("leads outside"), "{error}");
    }
}
