//! The rows of `results.csv`: one per benchmarked request, appended as each is measured.

use std::path::{Path, PathBuf};

use joule_executor::runtime::RunStatus;
use joule_planner::figure::Meter;
use joule_planner::plan::Method;
use serde::{Deserialize, Serialize};

use super::{BenchError, Strategy, io};

/// Whether a row was run on real backends or evaluated on the profiles alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Real,
    Simulated,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Real => "real",
            Mode::Simulated => "simulated",
        }
    }
}

/// One benchmarked request: a line of `results.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub mode: Mode,
    pub workflow: String,
    pub tier: String,
    pub slo_s: f64,
    pub policy: Strategy,
    /// The request's number within its (workflow, tier, policy), from 0.
    pub request: usize,
    /// The suite request it asked (`id` in the requests file).
    pub input: String,
    /// The run in `runs.db` (empty when simulated).
    pub run_id: String,
    pub status: RunStatus,
    /// The plan's method: `milp`, `static`, `greedy`, or `best-effort` when no plan met the SLO.
    pub plan: Method,
    /// The models the run used, `;`-separated.
    pub models: String,
    pub latency_s: f64,
    pub predicted_latency_s: f64,
    pub slo_met: bool,
    pub energy_j: f64,
    /// `nvml`, `rapl` or `estimate` (every simulated figure is an estimate); empty when
    /// nothing was metered.
    pub energy_method: Option<Meter>,
    pub predicted_energy_j: f64,
    pub cost_usd: f64,
    /// 0..1, by the workflow's scorer; predicted from profiles when simulated.
    pub quality: f64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub error: String,
}

/// The columns of `results.csv`, in order.
pub const COLUMNS: [&str; 22] = [
    "mode",
    "workflow",
    "tier",
    "slo_s",
    "policy",
    "request",
    "input",
    "run_id",
    "status",
    "plan",
    "models",
    "latency_s",
    "predicted_latency_s",
    "slo_met",
    "energy_j",
    "energy_method",
    "predicted_energy_j",
    "cost_usd",
    "quality",
    "tokens_in",
    "tokens_out",
    "error",
];

/// Reads `results.csv`; a missing file is no rows.
pub fn read_rows(path: &Path) -> Result<Vec<Row>, BenchError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut reader = csv::Reader::from_path(path).map_err(|e| io(path, e))?;
    reader
        .deserialize()
        .enumerate()
        .map(|(i, r)| {
            r.map_err(|e| BenchError::Request {
                file: path.display().to_string(),
                line: i + 2,
                message: format!("not a results row: {e}"),
            })
        })
        .collect()
}

/// Appends rows to `results.csv` as they are measured, so an interrupted benchmark keeps every
/// finished request.
pub struct Results {
    path: PathBuf,
    writer: csv::Writer<std::fs::File>,
    rows: Vec<Row>,
}

impl Results {
    /// Starts `results.csv` in `dir`, keeping the rows of the other mode already there (real
    /// and simulated results sit side by side) and dropping this mode's old ones.
    pub fn create(dir: &Path, mode: Mode) -> Result<Self, BenchError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let path = dir.join("results.csv");
        let kept: Vec<Row> = read_rows(&path)?
            .into_iter()
            .filter(|r| r.mode != mode)
            .collect();
        let file = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
        let mut writer = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(file);
        writer
            .write_record(COLUMNS)
            .and_then(|()| writer.flush().map_err(csv::Error::from))
            .map_err(|e| io(&path, e))?;
        let mut results = Self {
            writer,
            path,
            rows: Vec::new(),
        };
        for r in kept {
            results.push(r)?;
        }
        Ok(results)
    }

    pub fn push(&mut self, row: Row) -> Result<(), BenchError> {
        self.writer
            .serialize(&row)
            .and_then(|()| self.writer.flush().map_err(csv::Error::from))
            .map_err(|e| io(&self.path, e))?;
        self.rows.push(row);
        Ok(())
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
