//! Helpers shared by the end-to-end tests: run the real `joule` binary.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The binary, with this machine's profiles and calibration kept out of the way: every test
/// process gets its own empty profiles directory and no shipped machine profile, so plans
/// depend only on what a test gives.
pub fn joule() -> Command {
    static PROFILES: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = PROFILES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("joule-test-profiles-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    });
    let mut c = Command::new(env!("CARGO_BIN_EXE_joule"));
    c.env("JOULE_PROFILES_DIR", dir);
    // The shipped profile of this machine kind would make plans depend on the machine, and
    // so would a first run's quick measurement of the models (tested on its own).
    c.env("JOULE_SHIPPED_PROFILES", "0");
    c.env("JOULE_FIRST_MEASURE", "0");
    c
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs joule in `dir` and returns (exit code, stdout, stderr).
pub fn run_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = joule()
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("joule runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// The example workflows shipped in `workflows/`.
pub fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("workflows"))
        .expect("workflows/ exists")
        .map(|e| e.expect("readable").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

/// Makes sure SmolLM2, the model most default tests use, is in the model cache, fetching it
/// through the real `joule models fetch` once per test binary.
pub fn ensure_smol() {
    ensure_model("smollm2-135m");
}

/// Makes sure a catalog model is in the model cache (fetched once per test binary per model).
pub fn ensure_model(id: &str) {
    static DONE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if done.iter().any(|d| d == id) {
        return;
    }
    let (code, out, err) = run_in(&repo(), &["models", "fetch", id]);
    assert_eq!(code, 0, "fetching {id} failed:\n{out}\n{err}");
    done.push(id.to_string());
}

/// The Python with the client packages the serve tests drive (`.venv`, made by
/// `scripts/ensure-deps.sh --test`), or `JOULE_TEST_PYTHON`.
pub fn python() -> String {
    if let Ok(p) = std::env::var("JOULE_TEST_PYTHON") {
        return p;
    }
    let venv = repo().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "the client tests need Python with `openai`, `langchain-openai` and `langgraph`: run `scripts/ensure-deps.sh --test` (make test does) or set JOULE_TEST_PYTHON"
    );
    venv.display().to_string()
}

pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`, without `/v1`.
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server on a free port and waits for the line that says where it listens.
pub fn server() -> Server {
    ensure_smol();
    server_with(joule(), &[])
}

/// Starts `command` (a `joule` command, with its environment) as `joule serve` with extra
/// arguments, for models already fetched.
pub fn server_with(mut command: Command, args: &[&str]) -> Server {
    let mut child = command
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("joule serve starts");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches("/v1")
        .to_string();
    Server { child, base }
}
