//! What can go wrong between a command line and a finished run, as data: the binary decides
//! how each is shown (workflow errors with their source lines, plan errors with what would
//! fit, the rest as one line).

use joule_planner::SpecError;
use joule_planner::plan::PlanError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A workflow, catalog, profile or policy file that does not parse or compile; each error
    /// points at its file, line and column.
    #[error("{}", .errors.first().map_or_else(|| "invalid file".to_string(), SpecError::short))]
    Spec {
        errors: Vec<SpecError>,
        /// What the errors mean for the request, said after them.
        note: Option<String>,
    },
    /// No plan fits the budgets, or a step has nowhere it may run.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The run's inputs do not match what the workflow declares (every problem, at once).
    #[error("the inputs do not match the workflow: {}", .0.join("; "))]
    Inputs(Vec<String>),
    /// A setting from the environment that is misspelt or impossible.
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    #[error(transparent)]
    Store(#[from] joule_executor::store::StoreError),
    /// A request that cannot be met as given (a flag's value, an unknown name); the message
    /// says what to do instead.
    #[error("{0}")]
    Invalid(String),
    /// Something outside joule failed (a file, a device, a backend that cannot start).
    #[error("{0}")]
    Failed(String),
}

impl AppError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    pub fn spec(errors: Vec<SpecError>) -> Self {
        Self::Spec { errors, note: None }
    }

    /// Workflow errors with a note on what they mean for the request.
    pub fn spec_noted(errors: Vec<SpecError>, note: impl Into<String>) -> Self {
        Self::Spec {
            errors,
            note: Some(note.into()),
        }
    }
}
