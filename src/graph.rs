//! `joule graph FILE`: draw the compiled DAG.

use std::path::PathBuf;
use std::process::ExitCode;

use joule_planner::render;

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

pub fn run(args: &Args) -> miette::Result<ExitCode> {
    let ctx = joule_planner::catalog::Catalog::builtin().compile_context();
    match joule_planner::load(&args.file, &ctx) {
        Ok(dag) => {
            print!(
                "{}",
                match args.format {
                    Format::Dot => render::dot(&dag),
                    Format::Mermaid => render::mermaid(&dag),
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            crate::diagnostics::print(&errors);
            Ok(ExitCode::FAILURE)
        }
    }
}
