//! Untrusted text shown to people. Model answers, tool output, workflow text and HTTP bodies
//! can carry terminal control sequences (a clear screen, a window title, OSC 52 writing the
//! clipboard, a carriage return that rewrites a line, Unicode controls that reorder it); every
//! human-readable output shows them escaped, so what a person reads is what the text is. JSON
//! output stays exact.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must not reach a terminal as it is: C0 and C1 controls except newline and tab,
/// DEL, and the Unicode format characters that reorder or hide text (bidirectional
/// overrides and isolates, zero-width joiners and marks).
fn unsafe_char(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c,
            '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// `text` with every unsafe character written as a visible escape (`\e`, `\r`, `\u{202e}`).
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\u{1b}' => out.push_str("\\e"),
            '\r' => out.push_str("\\r"),
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn control_sequences_are_shown_not_obeyed() {
        assert_eq!(escape_controls("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(
            escape_controls("\u{1b}]52;c;aGk=\u{7}"),
            "\\e]52;c;aGk=\\u{7}"
        );
        assert_eq!(escape_controls("\u{1b}[2J\u{1b}[H"), "\\e[2J\\e[H");
        assert_eq!(escape_controls("ok\rNOT OK"), "ok\\rNOT OK");
        assert_eq!(escape_controls("a\u{202e}b\u{9b}"), "a\\u{202e}b\\u{9b}");
    }
}
