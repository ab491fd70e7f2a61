//! `joule graph FILE`: draw the compiled DAG.

use std::path::PathBuf;
use std::process::ExitCode;

use joule_planner::graph;

use super::Outcome;
use crate::show::diagnostics;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Dot,
    Mermaid,
}

#[derive(clap::Args)]
pub struct Args {
    /// The workflow file.
    file: PathBuf,
    /// Graphviz DOT (`| dot -Tsvg`) or Mermaid (renders in Markdown on GitHub).
    #[arg(long, value_enum, default_value = "dot")]
    format: Format,
}

pub fn run(args: &Args) -> Outcome {
    let ctx = joule_planner::catalog::Catalog::builtin().compile_context();
    match joule_planner::load(&args.file, &ctx) {
        Ok(dag) => {
            print!(
                "{}",
                match args.format {
                    Format::Dot => graph::dot(&dag),
                    Format::Mermaid => graph::mermaid(&dag),
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            diagnostics::print(&errors);
            Ok(ExitCode::FAILURE)
        }
    }
}
