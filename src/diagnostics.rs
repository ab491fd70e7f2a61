//! Printing workflow errors for people: `FILE:LINE:COL: message`, the source lines with the
//! spot marked, and the one-line fix. Colour only when stderr is a terminal, so logs and
//! snapshot tests get plain text.

use std::fmt;
use std::io::IsTerminal;

use joule_planner::SpecError;
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

/// The catalog named on the command line, or the built-in one; `None` after printing why a
/// named one is unusable.
pub fn catalog(path: Option<&std::path::Path>) -> Option<joule_planner::catalog::Catalog> {
    match path {
        Some(path) => match joule_planner::catalog::Catalog::load(path) {
            Ok(c) => Some(c),
            Err(errors) => {
                print(&errors);
                None
            }
        },
        None => Some(joule_planner::catalog::Catalog::builtin()),
    }
}

/// What workflows are compiled against: the catalog's models, endpoints and tools, and the
/// operator policy (`--policy FILE`, else `$JOULE_POLICY`); `None` after printing why the
/// policy file is unusable.
pub fn compile_context(
    catalog: &joule_planner::catalog::Catalog,
    policy: Option<&std::path::Path>,
) -> Option<joule_planner::dag::CompileContext> {
    let mut ctx = catalog.compile_context();
    let from_env = std::env::var_os("JOULE_POLICY")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from);
    if let Some(path) = policy.map(std::path::Path::to_path_buf).or(from_env) {
        match joule_planner::policy::OperatorPolicy::load(&path) {
            Ok(p) => ctx.operator = Some(p),
            Err(errors) => {
                print(&errors);
                eprintln!(
                    "the operator policy {} is unusable; nothing was compiled",
                    path.display()
                );
                return None;
            }
        }
    }
    Some(ctx)
}
