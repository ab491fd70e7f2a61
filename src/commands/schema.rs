//! `joule schema`: the JSON Schema of the workflow language, for editors.

use std::process::ExitCode;

pub fn run() -> super::Outcome {
    print!("{}", joule_planner::schema::workflow_schema());
    Ok(ExitCode::SUCCESS)
}
