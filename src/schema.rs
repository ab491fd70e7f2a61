//! `joule schema`: the JSON Schema of the workflow language, for editors.

use std::process::ExitCode;

pub fn run() -> miette::Result<ExitCode> {
    print!("{}", joule_planner::schema::workflow_schema());
    Ok(ExitCode::SUCCESS)
}
