//! Diagnostics that point into the workflow file.
//!
//! A data team fixes a workflow from the error message alone, so every error joule reports about
//! a workflow carries the file, the line and column it is about, what is wrong, and one line on
//! how to fix it. The type implements [`miette::Diagnostic`] so the binary can render the source
//! snippet, and exposes the plain fields so `--json` and tests can read them without parsing text.

use std::fmt;
use std::sync::Arc;

use miette::SourceSpan;
use serde::Serialize;

/// A workflow's source text with a line index, so byte offsets and line:column positions can be
/// converted both ways in O(log lines).
#[derive(Debug, Clone)]
pub struct SourceFile {
    name: Arc<str>,
    text: Arc<str>,
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        let text: String = text.into();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            name: Arc::from(name.into()),
            text: Arc::from(text),
            line_starts,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The byte offset of a 1-based line and 1-based *character* column (the convention of the
    /// YAML parser), clamped to the text.
    pub fn offset(&self, line: usize, column: usize) -> usize {
        let Some(&start) = self.line_starts.get(line.saturating_sub(1)) else {
            return self.text.len();
        };
        let end = self
            .line_starts
            .get(line)
            .copied()
            .unwrap_or(self.text.len());
        let line_text = &self.text[start..end];
        let skip = column.saturating_sub(1);
        start
            + line_text
                .char_indices()
                .nth(skip)
                .map_or(line_text.len(), |(i, _)| i)
    }

    /// The 1-based line and character column of a byte offset.
    pub fn position(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        Pos {
            line: line + 1,
            column,
            offset,
        }
    }
}

/// A position in a workflow file: 1-based line and character column, and the byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
    #[serde(skip)]
    pub offset: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// What class of mistake an error is: stable codes that tests, `--json` consumers and the docs
/// can rely on even when the wording of a message improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The file is not YAML, or not the shape of a workflow (wrong type, missing field).
    Syntax,
    /// A key the workflow language does not have.
    UnknownKey,
    /// A value outside its allowed range or format (a budget, a quality, a duration).
    InvalidValue,
    /// A step that is more than one kind (`prompt` and `tool`), or none.
    StepKind,
    /// A template that minijinja cannot parse.
    Template,
    /// A reference to a step, input or variable that does not exist.
    UnknownReference,
    /// A cycle among the steps' dependencies.
    Cycle,
    /// A pin or tool that the policy or the catalog does not allow.
    Policy,
    /// The file could not be read.
    Io,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Syntax => "syntax",
            ErrorCode::UnknownKey => "unknown-key",
            ErrorCode::InvalidValue => "invalid-value",
            ErrorCode::StepKind => "step-kind",
            ErrorCode::Template => "template",
            ErrorCode::UnknownReference => "unknown-reference",
            ErrorCode::Cycle => "cycle",
            ErrorCode::Policy => "policy",
            ErrorCode::Io => "io",
        }
    }
}

/// One error about a workflow file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    pub code: ErrorCode,
    pub message: String,
    /// One line on how to fix it.
    pub help: Option<String>,
    pub file: Arc<str>,
    pub pos: Pos,
    len: usize,
    src: Option<SourceFile>,
}

impl SpecError {
    /// An error at `offset..offset+len` of `file`.
    pub fn at(
        file: &SourceFile,
        offset: usize,
        len: usize,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Self {
        let pos = file.position(offset);
        Self {
            code,
            message: message.into(),
            help: None,
            file: Arc::clone(&file.name),
            pos,
            len: len.min(file.text.len().saturating_sub(pos.offset)),
            src: Some(file.clone()),
        }
    }

    /// An error about a whole file that has no text to point into (it could not be read).
    pub fn whole_file(file: &str, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            help: None,
            file: Arc::from(file),
            pos: Pos {
                line: 1,
                column: 1,
                offset: 0,
            },
            len: 0,
            src: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// `FILE:LINE:COL: message`, the form editors and `grep` understand.
    pub fn short(&self) -> String {
        format!("{}:{}: {}", self.file, self.pos, self.message)
    }

    /// The JSON form used by `joule validate --json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "file": &*self.file,
            "line": self.pos.line,
            "column": self.pos.column,
            "code": self.code,
            "message": self.message,
            "help": self.help,
        })
    }
}

impl miette::Diagnostic for SpecError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(format!("joule::{}", self.code.as_str())))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.src.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        self.src.as_ref()?;
        let span = SourceSpan::new(self.pos.offset.into(), self.len);
        Some(Box::new(std::iter::once(
            miette::LabeledSpan::new_with_span(Some(self.code.as_str().replace('-', " ")), span),
        )))
    }
}

impl miette::SourceCode for SourceFile {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let contents =
            self.text
                .as_ref()
                .read_span(span, context_lines_before, context_lines_after)?;
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.name.to_string(),
            contents.data(),
            *contents.span(),
            contents.line(),
            contents.column(),
            contents.line_count(),
        )))
    }
}

/// The closest candidate to a misspelt name, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// A help line suggesting the closest candidate, or listing all of them when none is close.
pub fn suggest(name: &str, what: &str, candidates: &[&str]) -> String {
    match did_you_mean(name, candidates.iter().copied()) {
        Some(c) => format!("did you mean `{c}`?"),
        None if candidates.is_empty() => format!("no {what} is defined"),
        None => format!(
            "expected one of: {}",
            candidates
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
