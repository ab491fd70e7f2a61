//! The energy benchmark's data: a suite (workflows with shipped requests, how to score their
//! answers, and their SLO tiers), one row per benchmarked request, and the results file.
//!
//! A benchmark is only worth its provenance, so the suite is plain files a reader can check
//! (`workflows/bench/`), every row says whether it was run or simulated and how its energy was
//! obtained, and quality is scored from shipped answers rather than judged by a model.
//! [`suite`] loads and checks it, [`driver`] plans and runs (or simulates) every request,
//! [`crate::examples`] judges each answer, [`score`] predicts its quality, [`results`] keeps the rows as they come, and [`summary`]
//! reduces them to the figures `summary.md` reports.

pub mod driver;
pub mod plot;
pub mod results;
pub mod score;
pub mod suite;
pub mod summary;

use std::path::Path;

use joule_planner::SpecError;

pub use joule_planner::solve::Strategy;
pub use results::{COLUMNS, Mode, Results, Row, read_rows};
pub use score::predicted_quality;
pub use suite::{Entry, MANIFEST, Suite};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{}", .0.first().map_or_else(String::new, ToString::to_string))]
    Spec(Vec<SpecError>),
    #[error("{file}:{line}: {message}")]
    Request {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Suite(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error(transparent)]
    Examples(#[from] crate::examples::ExamplesError),
}

pub(crate) fn io(path: &Path, e: impl std::fmt::Display) -> BenchError {
    BenchError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}
