//! joule's executor: fetches and runs models, executes plans, meters what each step cost.
//!
//! The planner decides; this crate does. It depends on the planner's types and never reaches
//! back into YAML.

pub mod audit;
pub mod backend;
pub mod bench;
pub mod devices;
pub mod eval;
pub mod meter;
pub mod models;
pub mod openai;
pub mod profiler;
pub mod report;
pub mod runtime;
pub mod sandbox;
pub mod store;
pub mod trace;

pub use joule_planner as planner;
