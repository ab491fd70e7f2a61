//! Printing errors for people: a workflow's as `FILE:LINE:COL: message` with the source lines
//! and the spot marked and the one-line fix, a plan's with what would fit, the rest as one
//! line. Colour only when stderr is a terminal, so logs and snapshot tests get plain text.

use std::fmt;
use std::io::IsTerminal;

use std::process::ExitCode;

use joule_app::AppError;
use joule_planner::SpecError;
use joule_planner::plan::PlanError;
use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme};

/// Shows the error's position in its headline, where editors and `grep` look for it.
struct Located<'a>(&'a SpecError);

impl fmt::Debug for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.short())
    }
}

impl std::error::Error for Located<'_> {}

impl Diagnostic for Located<'_> {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.0.code()
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.0.help()
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.0.source_code()
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        self.0.labels()
    }
}

/// Renders one error as text, plain or coloured.
pub fn render(error: &SpecError, color: bool) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_links(false);
    let mut out = String::new();
    if handler.render_report(&mut out, &Located(error)).is_err() {
        out = error.short();
    }
    out
}

/// Prints errors to stderr.
pub fn print(errors: &[SpecError]) {
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    for e in errors {
        eprintln!("{}", render(e, color));
    }
}

/// Says why a command failed and gives its exit code: 1 for a request that cannot be met as
/// written (a workflow error, no plan within the budgets, bad inputs), 2 for everything else.
pub fn fail(e: AppError) -> ExitCode {
    match e {
        AppError::Spec { errors, note } => {
            print(&errors);
            if let Some(note) = note {
                eprintln!("{note}");
            }
            ExitCode::FAILURE
        }
        AppError::Plan(p @ (PlanError::Infeasible(_) | PlanError::NoConfig { .. })) => {
            plan_error(p, false);
            ExitCode::FAILURE
        }
        AppError::Inputs(errors) => {
            for e in errors {
                eprintln!("error: {}", joule_planner::text::escape_controls(&e));
            }
            ExitCode::FAILURE
        }
        other => {
            eprintln!(
                "error: {}",
                joule_planner::text::escape_controls(&other.to_string())
            );
            ExitCode::from(2)
        }
    }
}

/// Says why no plan exists, as text on stderr or JSON on stdout.
pub fn plan_error(e: PlanError, json: bool) {
    match e {
        PlanError::Infeasible(why) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "feasible": false, "workflow": why.workflow, "reasons": why.reasons, "best": why.best, "min_slo_s": why.min_slo_s })
                );
            } else {
                eprint!("{}", why.to_text());
            }
        }
        PlanError::NoConfig { step, reasons } => {
            let mut msg = format!("step `{step}` has no model and device it may run on");
            for r in reasons {
                msg.push_str(&format!("\n  - {r}"));
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "feasible": false, "reasons": [msg] })
                );
            } else {
                eprintln!(
                    "{msg}\nlower its `quality`, allow more providers or models in its policy, or profile more devices"
                );
            }
        }
        e @ PlanError::Solver(_) => eprintln!("error: {e}"),
    }
}

/// A command's failure, shown as JSON on stdout when the command was asked for JSON and the
/// failure is a plan's (so scripts read why), and as text otherwise.
pub fn fail_as(e: AppError, json: bool) -> ExitCode {
    match e {
        AppError::Plan(p) if json => {
            plan_error(p, true);
            ExitCode::FAILURE
        }
        other => fail(other),
    }
}
