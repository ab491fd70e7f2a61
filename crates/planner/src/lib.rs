//! joule's planning core: everything between a workflow file and a plan, with no async runtime
//! and no model code, so that it is fast, deterministic and testable on its own.
//!
//! - [`spec`]: the workflow language (YAML to a checked [`spec::Workflow`]);
//! - [`dag`]: the compiler (references, edges, cycles, policy);
//! - [`template`]: the template dialect shared with the executor;
//! - [`diag`]: errors that point at file, line and column;
//! - [`graph`], [`schema`]: what `joule graph` and `joule schema` print.

pub mod catalog;
pub mod dag;
pub mod diag;
pub mod estimate;
pub mod figure;
pub mod graph;
pub mod pareto;
pub mod plan;
pub mod policy;
pub mod profile;
pub mod quality;
pub mod schema;
pub mod solve;
pub mod spec;
pub mod synth;
pub mod template;
pub mod text;

pub use dag::{CompileContext, Dag};
pub use diag::{ErrorCode, SourceFile, SpecError};
pub use spec::Workflow;

/// Parses and compiles workflow text in one go.
pub fn compile_source(file: &SourceFile, ctx: &CompileContext) -> Result<Dag, Vec<SpecError>> {
    dag::compile_with(spec::parse(file)?, ctx)
}

/// Reads, parses and compiles a workflow file.
pub fn load(path: &std::path::Path, ctx: &CompileContext) -> Result<Dag, Vec<SpecError>> {
    dag::compile_with(spec::load(path)?, ctx)
}
