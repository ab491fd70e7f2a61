//! Templates: the one place that knows joule's template dialect (minijinja) and what a template
//! may read.
//!
//! The compiler needs every `inputs.X` and `steps.Y` a template reads, to add the DAG's edges
//! and reject dangling names; the executor needs to render with exactly the same syntax and
//! filters. Both use [`environment`], so a template that validates is a template that renders.

use std::sync::OnceLock;

use minijinja::{Environment, Value};

/// The variables a template may read at the top level.
pub const INPUTS: &str = "inputs";
pub const STEPS: &str = "steps";
/// The current element inside a `for_each` step.
pub const ITEM: &str = "item";
/// The attribute of a step that holds its result.
pub const OUTPUT: &str = "output";

/// Functions minijinja provides as globals; reading them is not a reference to workflow data.
const BUILTIN_GLOBALS: &[&str] = &[
    "range",
    "dict",
    "namespace",
    "debug",
    "lipsum",
    "cycler",
    "joiner",
];

/// joule's template environment: minijinja's built-ins plus the filters workflows use.
pub fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_filter("lines", lines);
        env.add_filter("json", to_json);
        env
    })
}

/// Splits text into its non-blank lines, trimmed: the usual way to fan out over a tool's output.
fn lines(value: Value) -> Vec<String> {
    value
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| value.to_string())
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Serialises a value as compact JSON, for prompts that hand structured data to a model.
fn to_json(value: Value) -> Result<String, minijinja::Error> {
    serde_json::to_string(&value)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))
}

/// A template that does not parse: the message and the byte range inside the template text.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub message: String,
    pub range: Option<std::ops::Range<usize>>,
}

fn syntax_error(e: &minijinja::Error) -> SyntaxError {
    SyntaxError {
        message: e.detail().unwrap_or("invalid template").to_string(),
        range: e.range(),
    }
}

/// The variables a template reads, as dotted paths (`steps.search.output`), sorted.
pub fn template_variables(text: &str) -> Result<Vec<String>, SyntaxError> {
    // Plain text without any template syntax is the common case for long prompts' pieces; skip
    // the parser for it.
    if !text.contains("{{") && !text.contains("{%") && !text.contains("{#") {
        return Ok(Vec::new());
    }
    let tmpl = environment()
        .template_from_str(text)
        .map_err(|e| syntax_error(&e))?;
    Ok(sorted(tmpl.undeclared_variables(true)))
}

/// The expression inside a `when` or `for_each`: either `{{ expr }}` or the bare expression.
pub fn expression_source(text: &str) -> &str {
    let t = text.trim();
    match t.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")) {
        Some(inner) if !inner.contains("{{") && !inner.contains("}}") => inner.trim(),
        _ => t,
    }
}

/// The variables an expression reads, as dotted paths, sorted.
pub fn expression_variables(text: &str) -> Result<Vec<String>, SyntaxError> {
    let source = expression_source(text);
    if source.contains("{{") || source.contains("{%") {
        return Err(SyntaxError {
            message: "expected one expression, like `{{ steps.classify.output == 'bug' }}`".into(),
            range: None,
        });
    }
    let expr = environment()
        .compile_expression(source)
        .map_err(|e| syntax_error(&e))?;
    Ok(sorted(expr.undeclared_variables(true)))
}

fn sorted(set: std::collections::HashSet<String>) -> Vec<String> {
    let mut v: Vec<String> = set.into_iter().collect();
    v.sort_unstable();
    v
}

/// What a variable path refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference<'a> {
    Input(&'a str),
    /// A step, and the attribute read from it (`output`), if any.
    Step(&'a str, Option<&'a str>),
    Item,
    /// A minijinja global function such as `range`.
    Builtin,
    /// `inputs` or `steps` read whole, or `steps[...]`: joule cannot tell which entry.
    Whole(&'a str),
    Unknown(&'a str),
}

/// Classifies a dotted variable path from [`template_variables`].
pub fn classify(path: &str) -> Reference<'_> {
    let mut parts = path.split('.');
    let root = parts.next().unwrap_or_default();
    match root {
        INPUTS => parts
            .next()
            .map_or(Reference::Whole(INPUTS), Reference::Input),
        STEPS => match parts.next() {
            Some(step) => Reference::Step(step, parts.next()),
            None => Reference::Whole(STEPS),
        },
        ITEM => Reference::Item,
        r if BUILTIN_GLOBALS.contains(&r) => Reference::Builtin,
        r => Reference::Unknown(r),
    }
}

/// Where in the file `needle` (a variable path) is written, searching forward from `from`
/// (the start of the YAML scalar holding the template). The scalar may be quoted, folded or a
/// block, so positions inside the template do not map to the file by arithmetic; the text
/// itself does. Whitespace around the dots (`steps . x`) is tolerated by falling back to the
/// first path segment.
pub fn locate(source: &str, from: usize, needle: &str) -> Option<usize> {
    let hay = source.get(from..)?;
    if let Some(i) = find_word(hay, needle) {
        return Some(from + i);
    }
    let last = needle.rsplit('.').next()?;
    find_word(hay, last).map(|i| from + i)
}

/// The first occurrence of `needle` not inside a longer identifier.
fn find_word(hay: &str, needle: &str) -> Option<usize> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut start = 0;
    while let Some(i) = hay[start..].find(needle) {
        let at = start + i;
        let before = hay[..at].chars().next_back();
        let after = hay[at + needle.len()..].chars().next();
        if !before.is_some_and(|c| is_ident(c) || c == '.') && !after.is_some_and(is_ident) {
            return Some(at);
        }
        start = at + needle.len().max(1);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_references() {
        let vars = template_variables(
            "{{ inputs.ticket }} {% for d in steps.search.output | lines %}{{ d }}{% endfor %} {{ steps.a.output.x }}",
        )
        .unwrap();
        assert_eq!(
            vars,
            ["inputs.ticket", "steps.a.output.x", "steps.search.output"]
        );
        assert_eq!(
            classify("steps.a.output.x"),
            Reference::Step("a", Some("output"))
        );
        assert_eq!(classify("inputs"), Reference::Whole("inputs"));
        assert_eq!(classify("range"), Reference::Builtin);
        assert_eq!(classify("foo.bar"), Reference::Unknown("foo"));
    }

    #[test]
    fn plain_text_has_no_references() {
        assert!(
            template_variables("just words, no braces")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn expressions_with_or_without_braces() {
        assert_eq!(
            expression_variables("{{ steps.c.output == 'bug' }}").unwrap(),
            ["steps.c.output"]
        );
        assert_eq!(
            expression_variables("steps.c.output | lines").unwrap(),
            ["steps.c.output"]
        );
        assert!(expression_variables("{{ a }} and {{ b }}").is_err());
        assert!(expression_variables("{{ steps.c.output == }}").is_err());
    }

    #[test]
    fn syntax_errors_have_ranges() {
        let err = template_variables("hello {{ steps.x.output ").unwrap_err();
        assert!(!err.message.is_empty());
    }

    #[test]
    fn locate_skips_longer_identifiers() {
        let src = "prompt: '{{ steps.ab.output }} {{ steps.a.output }}'";
        assert_eq!(locate(src, 0, "steps.a.output"), src.find("steps.a.output"));
        assert_eq!(locate(src, 0, "steps.ab.output"), Some(12));
    }

    #[test]
    fn lines_filter_trims_and_drops_blanks() {
        let out = environment()
            .render_str(
                "{{ (text | lines) | join(',') }}",
                minijinja::context! { text => " a \n\n b\n" },
            )
            .unwrap();
        assert_eq!(out, "a,b");
    }
}
