//! joule's lab: the measuring side. [`profiler`] measures a (model, device) the way the
//! planner's cost model reads it, [`eval`] scores models on each kind of task, [`tune`]
//! measures a workflow's steps on its own [`examples`], [`first_run`] measures a new
//! machine's models quickly before its first plan, [`feedback`] folds the score of a run
//! whose right answers are known into the tuned figures, [`bench`]
//! compares joule's plans with the baselines on a suite of workflows, for real or simulated,
//! and [`plot`] draws every chart. These are applications of the executor and the model
//! backends, not parts of them.

pub mod bench;
pub mod eval;
pub mod examples;
pub mod feedback;
pub mod first_run;
pub mod plot;
pub mod profiler;
pub mod tune;
